//! The small chaos run: about 500 tasks on the local stack with every kind of fault
//! injected while they run, and the same checks as `batchplane chaos` (see
//! `batchplane_local::chaos`): nothing lost, doubled or overlapping, counts exact,
//! nothing left in the dead-letter queue.

use batchplane_local::chaos::{run, ChaosOptions};
use batchplane_testing::{binary, scratch_dir, Must, TestEmulators};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_workload_under_every_fault_loses_doubles_and_overlaps_nothing() {
    let emu = TestEmulators::get();
    let dir = scratch_dir("chaos");
    let opts = ChaosOptions::small();
    let report = run(
        &emu.dynamodb_url,
        &emu.sqs_url,
        &dir,
        Some(binary("taskhost")),
        &opts,
    )
    .await
    .must("the chaos run");
    println!("{}", report.table());
    assert!(
        report.passed(),
        "{:#?}\n{}",
        report.problems,
        report.table()
    );
    assert!(report.tasks >= 300, "{}", report.table());
    assert_eq!(
        (
            report.lost,
            report.doubled,
            report.overlapping,
            report.count_mismatches
        ),
        (0, 0, 0, 0)
    );
    // Every kind of fault happened.
    for kind in [
        "dynamodb throttle",
        "sqs throttle",
        "dynamodb unprocessed",
        "sqs skip_delete",
        "taskhost SIGKILL",
        "taskhost SIGSTOP past lease",
    ] {
        assert!(
            report.faults.get(kind).copied().unwrap_or(0) > 0,
            "no {kind}: {}",
            report.table()
        );
    }
}
