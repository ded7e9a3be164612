"""AWS Batch compatibility scenarios, driven by clients nobody here wrote: boto3's
`batch` client and the AWS CLI, pointed at a local Batchplane stack.

    python batch_clients.py SCENARIO API_URL [LOGS_URL]

Exits non-zero with the reason when a check fails. botocore parses every response,
so a response AWS's model cannot read fails the scenario too.
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.exceptions

URL = sys.argv[2]
batch = boto3.client("batch", endpoint_url=URL, region_name="us-east-1",
                     aws_access_key_id="AKIDBATCHTEST", aws_secret_access_key="secret")
# CloudWatch Logs, where the tasks' output is (moto's, locally).
logs = boto3.client("logs", endpoint_url=sys.argv[3] if len(sys.argv) > 3 else None,
                    region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local")


def log_lines(stream, group="/aws/batch/job", want=1, timeout=20):
    """The messages of a stream, as an AWS Batch user reads them (once `want` arrived)."""
    deadline = time.time() + timeout
    while True:
        try:
            events = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]
        except logs.exceptions.ResourceNotFoundException:
            events = []
        if len(events) >= want or time.time() > deadline:
            return [e["message"] for e in events]
        time.sleep(0.3)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def setup(queue="jq", size=None):
    batch.create_compute_environment(
        computeEnvironmentName=f"{queue}-ce", type="MANAGED", state="ENABLED",
        computeResources={"type": "SPOT", "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
                          "minvCpus": 0, "maxvCpus": 256, "desiredvCpus": 0,
                          "instanceTypes": ["c7g.large", "m7g.xlarge"], "subnets": ["subnet-1"],
                          "securityGroupIds": ["sg-1"], "instanceRole": "ecsInstanceRole"})
    batch.create_job_queue(jobQueueName=queue, state="ENABLED", priority=10,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": f"{queue}-ce"}])
    batch.register_job_definition(
        jobDefinitionName="sh", type="container",
        parameters={"code": "0"},
        containerProperties={"image": "unused", "command": ["sh", "-c", "Ref::script"],
                             "resourceRequirements": [{"type": "VCPU", "value": "0.5"},
                                                      {"type": "MEMORY", "value": "128"}]})


def submit(name, script, queue="jq", **kw):
    params = kw.pop("parameters", {})
    params["script"] = script
    return batch.submit_job(jobName=name, jobQueue=queue, jobDefinition="sh",
                            parameters=params, **kw)["jobId"]


def describe(job_id):
    jobs = batch.describe_jobs(jobs=[job_id])["jobs"]
    check(len(jobs) == 1, f"describe_jobs({job_id}) returned {len(jobs)}")
    return jobs[0]


def wait(job_id, timeout=120, states=("SUCCEEDED", "FAILED")):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = describe(job_id)
        if j["status"] in states:
            return j
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {describe(job_id)['status']} after {timeout}s")


def children(parent, **kw):
    out, token = [], None
    pages = 0
    while True:
        args = dict(arrayJobId=parent, maxResults=100, **kw)
        if token:
            args["nextToken"] = token
        page = batch.list_jobs(**args)
        pages += 1
        out += page["jobSummaryList"]
        token = page.get("nextToken")
        if not token:
            return out, pages


def listed_until(ok, timeout=10, **kw):
    """ListJobs' summaries once `ok` holds of their ids (or as they are at the timeout)."""
    deadline = time.time() + timeout
    while True:
        listed = batch.list_jobs(**kw)["jobSummaryList"]
        if ok([x["jobId"] for x in listed]) or time.time() > deadline:
            return listed
        time.sleep(0.2)


def client_error(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except botocore.exceptions.ClientError as e:
        check(e.response["Error"]["Code"] == "ClientException", f"error code {e.response['Error']}")
        check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 400, "status 400")
        return e.response["Error"]["Message"]
    raise AssertionError(f"{fn.__name__} succeeded; expected a ClientException")


def client_for(key):
    return boto3.client("batch", endpoint_url=URL, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key="secret")


def denied(fn, *args, **kw):
    """The call is refused as IAM refuses one: AccessDeniedException, 403."""
    try:
        fn(*args, **kw)
    except botocore.exceptions.ClientError as e:
        check(e.response["Error"]["Code"] == "AccessDeniedException", f"error code {e.response['Error']}")
        check(e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, "status 403")
        return e.response["Error"]["Message"]
    raise AssertionError(f"{fn.__name__} succeeded; expected AccessDeniedException")


def tenancy():
    """AKIDALICE is a member of research, AKIDBOB of finance (granted by the test before
    this runs); AKIDNOBODY has no role. Bob cannot see or touch Alice's job or
    definition, nor submit as research; neither can change the shared resources."""
    setup()
    alice, bob, nobody = client_for("AKIDALICE"), client_for("AKIDBOB"), client_for("AKIDNOBODY")
    alice.register_job_definition(
        jobDefinitionName="research-sh", type="container",
        containerProperties={"image": "unused", "command": ["sh", "-c", "echo SECRET=$TOKEN; sleep 30"],
                             "environment": [{"name": "TOKEN", "value": "research-secret"}],
                             "resourceRequirements": [{"type": "VCPU", "value": "0.5"},
                                                      {"type": "MEMORY", "value": "128"}]})
    mine = alice.describe_job_definitions(jobDefinitionName="research-sh")["jobDefinitions"]
    check(len(mine) == 1 and mine[0]["tags"]["batchplane:team"] == "research", mine)
    job = alice.submit_job(jobName="private", jobQueue="jq", jobDefinition="research-sh")["jobId"]
    check(alice.describe_jobs(jobs=[job])["jobs"][0]["jobId"] == job, "alice sees her job")

    # To Bob the job and the definition do not exist.
    check(bob.describe_jobs(jobs=[job])["jobs"] == [], "bob's describe_jobs shows nothing")
    for status in ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"]:
        listed = bob.list_jobs(jobQueue="jq", jobStatus=status)["jobSummaryList"]
        check(all(x["jobId"] != job for x in listed), f"bob lists alice's job as {status}")
    check(bob.describe_job_definitions(jobDefinitionName="research-sh")["jobDefinitions"] == [],
          "bob sees alice's definition")
    msg = client_error(bob.cancel_job, jobId=job, reason="mine now")
    check("does not exist" in msg, msg)
    msg = client_error(bob.terminate_job, jobId=job, reason="mine now")
    check("does not exist" in msg, msg)
    msg = client_error(bob.list_tags_for_resource, resourceArn=f"arn:aws:batch:us-east-1:000000000000:job/{job}")
    check("does not exist" in msg, msg)
    msg = client_error(bob.submit_job, jobName="x", jobQueue="jq", jobDefinition="research-sh")
    check("does not exist" in msg, msg)
    msg = client_error(bob.register_job_definition, jobDefinitionName="research-sh", type="container",
                       containerProperties={"image": "x", "command": ["true"], "vcpus": 1, "memory": 64})
    check("another team" in msg, msg)
    # Bob may not submit as research, nor change what all teams share.
    bob.register_job_definition(jobDefinitionName="finance-sh", type="container",
                                containerProperties={"image": "x", "command": ["true"], "vcpus": 1, "memory": 64})
    msg = denied(bob.submit_job, jobName="x", jobQueue="jq", jobDefinition="finance-sh",
                 shareIdentifier="research")
    check("research" in msg and "AKIDBOB" in msg, msg)
    denied(bob.create_job_queue, jobQueueName="bobs", state="ENABLED", priority=1,
           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "jq-ce"}])
    denied(bob.update_job_queue, jobQueue="jq", priority=99)
    denied(bob.delete_compute_environment, computeEnvironment="jq-ce")
    denied(bob.create_scheduling_policy, name="bobs")
    check(bob.describe_job_queues()["jobQueues"][0]["priority"] == 10, "the queue is unchanged")
    # Someone with no role sees none of it.
    check(nobody.describe_job_queues()["jobQueues"] == [], "nobody sees queues")
    check(nobody.list_scheduling_policies()["schedulingPolicies"] == [], "nobody lists policies")
    check(nobody.describe_jobs(jobs=[job])["jobs"] == [], "nobody sees the job")
    denied(nobody.submit_job, jobName="x", jobQueue="jq", jobDefinition="finance-sh")
    # Alice's job is untouched by all of that, and she may stop it.
    got = alice.describe_jobs(jobs=[job])["jobs"][0]
    check(got["status"] in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"), got)
    alice.terminate_job(jobId=job, reason="done")


def resources():
    setup()
    ces = batch.describe_compute_environments(computeEnvironments=["jq-ce"])["computeEnvironments"]
    check(ces[0]["computeResources"]["allocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED", ces)
    check(ces[0]["computeEnvironmentArn"].endswith(":compute-environment/jq-ce"), ces)
    batch.update_compute_environment(computeEnvironment="jq-ce", computeResources={"desiredvCpus": 8})
    ce = batch.describe_compute_environments(computeEnvironments=["jq-ce"])["computeEnvironments"][0]
    check(ce["computeResources"]["desiredvCpus"] == 8, ce)
    msg = client_error(batch.create_compute_environment, computeEnvironmentName="bad", type="MANAGED",
                       computeResources={"type": "EC2", "maxvCpus": 4, "minvCpus": 8, "subnets": ["s"]})
    check("minvCpus" in msg, msg)
    msg = client_error(batch.delete_compute_environment, computeEnvironment="jq-ce")
    check("DISABLED" in msg, msg)
    # GPUs are honoured, from a definition or an override: the job goes to a pool of GPU
    # workers (a one-tier job of its vCPUs, memory and GPUs; none runs here, so it waits).
    batch.register_job_definition(
        jobDefinitionName="gpu", type="container",
        containerProperties={"image": "x", "command": ["nvidia-smi"], "resourceRequirements": [
            {"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "1024"}, {"type": "GPU", "value": "1"}]})
    on_gpu = batch.submit_job(jobName="gpu", jobQueue="jq", jobDefinition="gpu")["jobId"]
    overridden = batch.submit_job(jobName="gpu2", jobQueue="jq", jobDefinition="gpu", containerOverrides={
        "resourceRequirements": [{"type": "GPU", "value": "2"}]})["jobId"]
    time.sleep(2)  # long enough for a worker of the queue's own pool to have taken it
    for job, gpus in ((on_gpu, "1"), (overridden, "2")):
        reqs = {r["type"]: r["value"] for r in describe(job)["container"]["resourceRequirements"]}
        check(reqs == {"VCPU": "1", "MEMORY": "1024", "GPU": gpus}, reqs)
        check(describe(job)["status"] in ("RUNNABLE", "PENDING"), describe(job))
        batch.terminate_job(jobId=job, reason="no GPU here")
    # Definitions: revisions, name:rev, latest, deregister.
    second = batch.register_job_definition(jobDefinitionName="sh", type="container",
                                           containerProperties={"image": "x", "command": ["true"]})
    check(second["revision"] == 2, second)
    defs = batch.describe_job_definitions(jobDefinitionName="sh")["jobDefinitions"]
    check([d["revision"] for d in defs] == [1, 2], defs)
    batch.deregister_job_definition(jobDefinition="sh:2")
    active = batch.describe_job_definitions(jobDefinitionName="sh", status="ACTIVE")["jobDefinitions"]
    check([d["revision"] for d in active] == [1], active)
    one = batch.describe_job_definitions(jobDefinitions=["sh:1"])["jobDefinitions"]
    check(one[0]["containerProperties"]["command"] == ["sh", "-c", "Ref::script"], one)
    # Pagination over definitions.
    for i in range(5):
        batch.register_job_definition(jobDefinitionName=f"d{i}", type="container",
                                      containerProperties={"image": "x", "command": ["true"]})
    seen, token = [], None
    while True:
        page = batch.describe_job_definitions(maxResults=2, **({"nextToken": token} if token else {}))
        seen += page["jobDefinitions"]
        token = page.get("nextToken")
        if not token:
            break
    # sh (its ACTIVE revision and the deregistered one), gpu and d0..d4.
    check(len(seen) == 8, f"{len(seen)} definitions over pages")
    # Queues.
    q = batch.describe_job_queues(jobQueues=["jq"])["jobQueues"][0]
    check(q["priority"] == 10 and q["state"] == "ENABLED", q)
    batch.update_job_queue(jobQueue="jq", priority=20)
    check(batch.describe_job_queues(jobQueues=["jq"])["jobQueues"][0]["priority"] == 20, "priority updated")
    msg = client_error(batch.create_job_queue, jobQueueName="q2", priority=1,
                       computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "missing"}])
    check("missing" in msg, msg)
    # Scheduling policies.
    p = batch.create_scheduling_policy(name="fair", fairsharePolicy={
        "shareDistribution": [{"shareIdentifier": "teamA", "weightFactor": 0.5}]})
    got = batch.describe_scheduling_policies(arns=[p["arn"]])["schedulingPolicies"]
    check(got[0]["fairsharePolicy"]["shareDistribution"][0]["shareIdentifier"] == "teamA", got)
    check(batch.list_scheduling_policies()["schedulingPolicies"][0]["arn"] == p["arn"], "listed")
    # Tags.
    arn = q["jobQueueArn"]
    batch.tag_resource(resourceArn=arn, tags={"team": "research", "cost": "42"})
    check(batch.list_tags_for_resource(resourceArn=arn)["tags"] == {"team": "research", "cost": "42"}, "tags")
    batch.untag_resource(resourceArn=arn, tagKeys=["cost"])
    check(batch.list_tags_for_resource(resourceArn=arn)["tags"] == {"team": "research"}, "untagged")
    # A disabled queue accepts no jobs; deleting needs DISABLED too.
    batch.update_job_queue(jobQueue="jq", state="DISABLED")
    msg = client_error(batch.submit_job, jobName="x", jobQueue="jq", jobDefinition="sh:1")
    check("DISABLED" in msg, msg)
    batch.delete_job_queue(jobQueue="jq")
    check(batch.describe_job_queues(jobQueues=["jq"])["jobQueues"] == [], "queue deleted")
    batch.update_compute_environment(computeEnvironment="jq-ce", state="DISABLED")
    batch.delete_compute_environment(computeEnvironment="jq-ce")
    # What Batchplane does not do is refused, never silently accepted.
    msg = client_error(batch.create_quota_share, quotaShareName="q", jobQueue="jq",
                       capacityLimits=[{"maxCapacity": 1, "capacityUnit": "VCPU"}],
                       resourceSharingConfiguration={"strategy": "RESERVE"}, preemptionConfiguration={"inSharePreemption": "DISABLED"}, state="ENABLED")
    check("not supported" in msg, msg)
    msg = client_error(batch.submit_job, jobName="bad name!", jobQueue="jq", jobDefinition="sh")
    check("jobName" in msg, msg)


def array():
    setup()
    parent = submit("three-hundred", 'echo "child $AWS_BATCH_JOB_ARRAY_INDEX of $AWS_BATCH_JOB_ID in $AWS_BATCH_JQ_NAME attempt $AWS_BATCH_JOB_ATTEMPT"',
                    arrayProperties={"size": 300})
    j = wait(parent, timeout=200)
    check(j["status"] == "SUCCEEDED", j)
    check(j["arrayProperties"]["size"] == 300, j)
    check(j["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 300, j["arrayProperties"])
    kids, pages = children(parent, jobStatus="SUCCEEDED")
    check(len(kids) == 300 and pages == 3, f"{len(kids)} children over {pages} pages")
    check(len({k["jobId"] for k in kids}) == 300, "distinct child ids")
    child = describe(f"{parent}:7")
    check(child["status"] == "SUCCEEDED" and child["arrayProperties"]["index"] == 7, child)
    stream = child["attempts"][0]["container"]["logStreamName"]
    check(stream == f"sh/default/{parent}.7.1", stream)
    out = log_lines(stream)
    check(out == [f"child 7 of {parent}:7 in jq attempt 1"], out)
    # Listed by status from an index the job's stream record moves: a moment behind.
    listed = listed_until(lambda ids: ids == [parent], jobQueue="jq", jobStatus="SUCCEEDED")
    check([x["jobId"] for x in listed] == [parent], listed)
    check(batch.describe_jobs(jobs=["nope", parent + ":5000"])["jobs"] == [], "unknown ids are left out")


def n_to_n():
    setup()
    # The last child is slow, so eager release shows however loaded the machine is: b's
    # other children start while it still runs.
    a = submit("a", 'if [ "$AWS_BATCH_JOB_ARRAY_INDEX" = 39 ]; then sleep 8; else sleep 0.$((AWS_BATCH_JOB_ARRAY_INDEX % 5)); fi',
               arrayProperties={"size": 40})
    b = submit("b", "true", arrayProperties={"size": 40}, dependsOn=[{"jobId": a, "type": "N_TO_N"}])
    check(describe(b)["dependsOn"] == [{"jobId": a, "type": "N_TO_N"}], describe(b)["dependsOn"])
    wait(b, timeout=180)
    states = (describe(a)["status"], describe(b)["status"])
    check(states == ("SUCCEEDED", "SUCCEEDED"), f"both succeeded: a and b are {states}")
    a_kids = {k["arrayProperties"]["index"]: k for k in children(a, jobStatus="SUCCEEDED")[0]}
    b_kids = {k["arrayProperties"]["index"]: k for k in children(b, jobStatus="SUCCEEDED")[0]}
    check(len(a_kids) == 40 and len(b_kids) == 40, f"{len(a_kids)} and {len(b_kids)} children")
    a_done = max(k["stoppedAt"] for k in a_kids.values())
    early = 0
    for i in range(40):
        check(b_kids[i]["startedAt"] >= a_kids[i]["stoppedAt"], f"b:{i} started before a:{i} ended")
        early += b_kids[i]["startedAt"] < a_done
    check(early > 0, "release is eager: some b child starts before all of a has finished")
    # Sizes must match.
    c = submit("c", "true", arrayProperties={"size": 3})
    msg = client_error(batch.submit_job, jobName="d", jobQueue="jq", jobDefinition="sh",
                       parameters={"script": "true"}, arrayProperties={"size": 4},
                       dependsOn=[{"jobId": c, "type": "N_TO_N"}])
    check("same size" in msg, msg)


def sequential():
    setup()
    s = submit("seq", "sleep 0.2", arrayProperties={"size": 6}, dependsOn=[{"type": "SEQUENTIAL"}])
    j = wait(s, timeout=120)
    check(j["status"] == "SUCCEEDED", j)
    kids = sorted(children(s, jobStatus="SUCCEEDED")[0], key=lambda k: k["arrayProperties"]["index"])
    check([k["arrayProperties"]["index"] for k in kids] == list(range(6)), kids)
    for prev, nxt in zip(kids, kids[1:]):
        check(nxt["startedAt"] >= prev["stoppedAt"], f"{nxt['jobId']} overlapped {prev['jobId']}")
    f = submit("seqfail", 'test "$AWS_BATCH_JOB_ARRAY_INDEX" != 2', arrayProperties={"size": 5},
               dependsOn=[{"type": "SEQUENTIAL"}])
    j = wait(f, timeout=120)
    check(j["status"] == "FAILED", j)
    summary = j["arrayProperties"]["statusSummary"]
    check(summary["SUCCEEDED"] == 2 and summary["FAILED"] == 3, summary)
    check("did not succeed" in describe(f"{f}:4")["statusReason"], describe(f"{f}:4"))


def many_dependencies():
    setup()
    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        deps = list(pool.map(lambda i: submit(f"dep{i}", "true"), range(250)))
    t1 = time.time()
    last = submit("after-all", "true", dependsOn=[{"jobId": d} for d in deps])
    t2 = time.time()
    j = wait(last, timeout=240)
    print(f"submitted 250 jobs in {t1 - t0:.1f}s, the dependent in {t2 - t1:.1f}s, "
          f"all done {time.time() - t2:.1f}s later")
    check(j["status"] == "SUCCEEDED", j)
    check(len(j["dependsOn"]) == 250, len(j["dependsOn"]))
    latest = max(describe(d)["stoppedAt"] for d in deps[-20:])
    check(j["startedAt"] >= latest, "started after its dependencies")
    bad = submit("fails", "exit 1")
    after_bad = submit("after-bad", "true", dependsOn=[{"jobId": bad}])
    j = wait(after_bad)
    check(j["status"] == "FAILED" and bad in j["statusReason"], j)


def retries():
    setup()
    batch.register_job_definition(
        jobDefinitionName="flaky", type="container",
        containerProperties={"image": "x", "command": ["sh", "-c", "exit $AWS_BATCH_JOB_ATTEMPT"]},
        retryStrategy={"attempts": 3, "evaluateOnExit": [{"onExitCode": "2", "action": "EXIT"}]})
    j = wait(batch.submit_job(jobName="stops", jobQueue="jq", jobDefinition="flaky")["jobId"])
    check(j["status"] == "FAILED" and len(j["attempts"]) == 2, j)
    check([a["container"]["exitCode"] for a in j["attempts"]] == [1, 2], j["attempts"])
    j = wait(batch.submit_job(jobName="retried", jobQueue="jq", jobDefinition="flaky",
                              retryStrategy={"attempts": 3})["jobId"])
    check(len(j["attempts"]) == 3 and j["status"] == "FAILED", j)
    j = wait(submit("slow", "sleep 30", timeout={"attemptDurationSeconds": 2}), timeout=60)
    check(j["status"] == "FAILED" and "Job attempt duration exceeded timeout" in j["statusReason"], j)
    msg = client_error(batch.submit_job, jobName="x", jobQueue="jq", jobDefinition="sh",
                       retryStrategy={"attempts": 11})
    check("attempts" in msg, msg)


def cancel_terminate():
    setup()
    running = submit("runs", "echo started; sleep 60")
    wait(running, states=("RUNNING",), timeout=60)
    # The running attempt's stream is named at once, and its output is in it meanwhile.
    stream = describe(running)["container"]["logStreamName"]
    check(stream == f"sh/default/{running}.0.1", stream)
    check(log_lines(stream) == ["started"], log_lines(stream))
    # Waits on the running job: PENDING until it ends, so cancelling it fails it at once.
    big = submit("waits", "sleep 60", arrayProperties={"size": 50}, dependsOn=[{"jobId": running}])
    check(describe(big)["status"] == "PENDING", describe(big))
    batch.cancel_job(jobId=big, reason="not needed")
    j = wait(big, timeout=30)
    # The reason is the caller's, as given; the job says it was cancelled.
    check(j["status"] == "FAILED" and j["statusReason"] == "not needed", j)
    check(j.get("isCancelled") is True and "isTerminated" not in j, j)
    check(j["arrayProperties"]["statusSummary"]["FAILED"] == 50, j["arrayProperties"])
    # cancel_job on a RUNNING job leaves it running, as AWS Batch does.
    batch.cancel_job(jobId=running, reason="too late")
    check(describe(running)["status"] == "RUNNING", describe(running))
    batch.terminate_job(jobId=running, reason="stop now")
    j = wait(running, timeout=30)
    check(j["status"] == "FAILED" and j["statusReason"] == "stop now", j)
    check(j.get("isTerminated") is True and "isCancelled" not in j, j)
    check(isinstance(j.get("stoppedAt"), int), j)
    # Its attempt was killed, not left running.
    deadline = time.time() + 30
    while time.time() < deadline and not describe(running)["attempts"]:
        time.sleep(0.3)
    check(describe(running)["attempts"], "the terminated attempt is recorded")
    # The bulk forms: each job reported on its own, an unknown one counted as done.
    a, b = submit("bulk-a", "sleep 60"), submit("bulk-b", "sleep 60")
    wait(a, states=("RUNNING",), timeout=60)
    out = batch.terminate_jobs(jobs=[a, b, "j-00000000001-000000000000"], reason="bulk stop")
    check(sorted(out["successful"]) == sorted([a, b, "j-00000000001-000000000000"]) and out["errors"] == [], out)
    for job in (a, b):
        j = wait(job, timeout=30)
        check(j["status"] == "FAILED" and j["statusReason"] == "bulk stop" and j.get("isTerminated"), j)
    # The front of the queue: RUNNABLE jobs only, oldest first (the waiting one is PENDING).
    blocker = submit("blocker", "sleep 60")
    c = submit("bulk-c", "true", dependsOn=[{"jobId": blocker}])
    front = batch.get_job_queue_snapshot(jobQueue="jq")["frontOfQueue"]
    arns = [x["jobArn"] for x in front["jobs"]]
    check(not any(x.endswith(c) for x in arns) and front["lastUpdatedAt"] > 0, front)
    check(all(a["earliestTimeAtPosition"] <= b["earliestTimeAtPosition"]
              for a, b in zip(front["jobs"], front["jobs"][1:])), front)
    check("does not exist" in client_error(batch.get_job_queue_snapshot, jobQueue="nope"), "unknown queue")
    out = batch.cancel_jobs(jobs=[c], reason="never mind")
    check(out["successful"] == [c] and out["errors"] == [], out)
    j = wait(c, timeout=30)
    check(j["statusReason"] == "never mind" and j.get("isCancelled"), j)
    msg = client_error(batch.cancel_jobs, jobs=[str(i) for i in range(51)], reason="x")
    check("1 to 50" in msg, msg)


def array_stop():
    """CancelJob and TerminateJob on an array whose children are running, as AWS documents
    them: the parent stays PENDING until its running children have ended, no child starts
    after the call, and the parent then ends FAILED with the caller's reason."""
    setup()

    def running_children(parent):
        return children(parent, jobStatus="RUNNING")[0]

    def when_running(parent):
        deadline = time.time() + 60
        while time.time() < deadline and not running_children(parent):
            time.sleep(0.3)
        check(running_children(parent), f"no child of {parent} started")

    arr = submit("finishing", "sleep 4", arrayProperties={"size": 40})
    when_running(arr)
    batch.cancel_job(jobId=arr, reason="enough")
    started = {c["jobId"] for c in running_children(arr)}
    check(describe(arr)["status"] == "PENDING", describe(arr))
    j = wait(arr, timeout=60)
    check(j["status"] == "FAILED" and j["statusReason"] == "enough" and j.get("isCancelled"), j)
    summary = j["arrayProperties"]["statusSummary"]
    # The children running at the call finished; none started after it.
    done = {c["jobId"] for c in children(arr, jobStatus="SUCCEEDED")[0]}
    check(started <= done and len(done) < 40, (sorted(started), sorted(done)))
    check(summary["SUCCEEDED"] == len(done) and summary["FAILED"] == 40 - len(done), summary)
    check(not running_children(arr), "no child runs once the parent ended")

    arr = submit("killed", "sleep 60", arrayProperties={"size": 8})
    when_running(arr)
    batch.terminate_job(jobId=arr, reason="stop now")
    j = wait(arr, timeout=60)
    check(j["status"] == "FAILED" and j["statusReason"] == "stop now" and j.get("isTerminated"), j)
    # Closed only once its running children were killed: none is left running.
    check(not running_children(arr), running_children(arr))
    check(j["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 0, j["arrayProperties"])


def signing():
    """A stack that refuses what API Gateway refuses: a call signed for `batch` (as
    boto3 and the AWS CLI sign it) is refused; with the batchplane-botocore plugin
    (clients/batchplane-botocore) both work unchanged."""
    global batch
    msg = denied(batch.describe_job_queues)
    check("execute-api" in msg, msg)
    plugin = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "batchplane-botocore")
    sys.path.insert(0, plugin)
    import batchplane_botocore
    check(batchplane_botocore.is_aws_batch_endpoint("https://batch.eu-west-1.amazonaws.com"), "AWS Batch's own")
    check(not batchplane_botocore.is_aws_batch_endpoint(URL), URL)
    session = boto3.Session(aws_access_key_id="AKIDBATCHTEST", aws_secret_access_key="secret",
                            region_name="us-east-1")
    batchplane_botocore.register(session)
    batch = session.client("batch", endpoint_url=URL)
    setup()
    j = wait(submit("signed", "echo signed"))
    check(j["status"] == "SUCCEEDED", j)
    # The AWS CLI, with the plugin named in its config file.
    config = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"batchplane-cli-config-{os.getpid()}")
    with open(config, "w") as f:
        f.write("[plugins]\nbatchplane = batchplane_botocore\n")
    aws = os.path.join(os.path.dirname(sys.executable), "aws")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIDCLI", AWS_SECRET_ACCESS_KEY="secret",
               AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=plugin)
    args = [aws, "batch", "describe-jobs", "--jobs", j["jobId"], "--endpoint-url", URL, "--output", "json"]
    refused = subprocess.run(args, env=env, capture_output=True, text=True)
    check(refused.returncode != 0 and "execute-api" in refused.stderr, refused.stderr)
    out = subprocess.run(args, env=dict(env, AWS_CONFIG_FILE=config), capture_output=True, text=True)
    check(out.returncode == 0, out.stderr)
    check(json.loads(out.stdout)["jobs"][0]["status"] == "SUCCEEDED", out.stdout)
    os.unlink(config)


def fair_share():
    setup()
    big = submit("million", "sleep 0.05", arrayProperties={"size": 1000000})
    # As AWS Batch's: the parent is PENDING while its children run, and listed so.
    deadline = time.time() + 60
    while time.time() < deadline and not batch.list_jobs(arrayJobId=big, jobStatus="RUNNING")["jobSummaryList"]:
        time.sleep(0.3)
    check(describe(big)["status"] == "PENDING", describe(big))
    pending = batch.list_jobs(jobQueue="jq", jobStatus="PENDING")["jobSummaryList"]
    check([x["jobId"] for x in pending] == [big], pending)
    time.sleep(2)
    t0 = time.time()
    small = submit("small", "true", arrayProperties={"size": 10})
    j = wait(small, timeout=60)
    took = time.time() - t0
    check(j["status"] == "SUCCEEDED", j)
    check(took < 30, f"the small job took {took:.1f}s behind the million-child job")
    batch.terminate_job(jobId=big, reason="done")
    print(json.dumps({"small_job_seconds": round(took, 2)}))


def semantics():
    """What a container moved off AWS Batch relies on: its variables, the reserved
    prefix, exit codes of signals, the out-of-memory reason and the rules matching it,
    and ListJobs' filters."""
    setup()
    env_script = ('test "$AWS_BATCH_CE_NAME|$AWS_BATCH_JQ_NAME|$AWS_BATCH_JOB_ARRAY_SIZE|$AWS_EXECUTION_ENV" = "jq-ce|jq|3|AWS_ECS_EC2" '
                  '&& test -n "$AWS_REGION" && test "$AWS_REGION" = "$AWS_DEFAULT_REGION" '
                  '&& test "$AWS_BATCH_JOB_ATTEMPT" = 1 && test -n "$AWS_BATCH_JOB_ID"')
    j = wait(submit("env", env_script, arrayProperties={"size": 3}))
    check(j["status"] == "SUCCEEDED", (j, describe(f"{j['jobId']}:0")))
    # The reserved prefix is refused wherever a job sets variables.
    msg = client_error(batch.register_job_definition, jobDefinitionName="reserved", type="container",
                       containerProperties={"image": "x", "command": ["true"], "vcpus": 1, "memory": 64,
                                            "environment": [{"name": "AWS_BATCH_JOB_ID", "value": "mine"}]})
    check("AWS_BATCH_" in msg and "containerProperties" in msg, msg)
    msg = client_error(batch.submit_job, jobName="x", jobQueue="jq", jobDefinition="sh",
                       parameters={"script": "true"},
                       containerOverrides={"environment": [{"name": "AWS_BATCH_CE_NAME", "value": "x"}]})
    check("AWS_BATCH_" in msg and "containerOverrides" in msg, msg)
    # Killed by a signal: 128 + the signal, as a container runtime reports it.
    j = wait(submit("killed", "kill -9 $$"))
    check(j["status"] == "FAILED" and j["attempts"][-1]["container"]["exitCode"] == 137, j)
    check(j["container"]["exitCode"] == 137, j["container"])
    # Out of memory: AWS's reason, and the usual rules match it (EXIT stops retries).
    batch.register_job_definition(
        jobDefinitionName="hog", type="container",
        containerProperties={"image": "x", "command": ["python3", "-c",
                             "import time\nx = []\nfor _ in range(60): x.append(b'x' * (4 << 20)); time.sleep(0.005)\ntime.sleep(0.4)"],
                             "resourceRequirements": [{"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "64"}]},
        retryStrategy={"attempts": 3, "evaluateOnExit": [{"onReason": "OutOfMemoryError*", "action": "EXIT"}]})
    j = wait(batch.submit_job(jobName="hog", jobQueue="jq", jobDefinition="hog")["jobId"])
    last = j["attempts"][-1]
    check(j["status"] == "FAILED" and len(j["attempts"]) == 1, j)
    check(last["container"]["reason"].startswith("OutOfMemoryError: Container killed due to memory usage"), last)
    check(last["container"]["exitCode"] == 137, last)
    j = wait(batch.submit_job(jobName="hog137", jobQueue="jq", jobDefinition="hog", retryStrategy={
        "attempts": 3, "evaluateOnExit": [{"onExitCode": "137", "action": "EXIT"}]})["jobId"])
    check(len(j["attempts"]) == 1, j)
    check(all(isinstance(a.get("stoppedAt"), int) for a in j["attempts"]), j["attempts"])
    # ListJobs' filters, as the model documents them.
    names = {"Test1": submit("Test1", "true"), "test10": submit("test10", "true"), "other": submit("other", "true")}
    for job in names.values():
        wait(job)

    def listed(name, value, **kw):
        page = batch.list_jobs(jobQueue="jq", filters=[{"name": name, "values": [value]}], **kw)
        return {x["jobName"] for x in page["jobSummaryList"]}
    check({"Test1", "test10"} <= listed("JOB_NAME", "test1*") and "other" not in listed("JOB_NAME", "test1*"),
          listed("JOB_NAME", "test1*"))
    check(listed("JOB_NAME", "TEST1") == {"Test1"}, listed("JOB_NAME", "TEST1"))
    defs = batch.describe_job_definitions(jobDefinitionName="sh")["jobDefinitions"]
    by_def = listed("JOB_DEFINITION", "sh")
    check({"Test1", "test10", "other"} <= by_def and "hog" not in by_def, by_def)
    check({"Test1", "test10", "other"} <= listed("JOB_DEFINITION", defs[0]["jobDefinitionArn"]), "by ARN")
    check(listed("JOB_DEFINITION", "ho*") >= {"hog", "hog137"}, listed("JOB_DEFINITION", "ho*"))
    created = describe(names["test10"])["createdAt"]
    check("test10" not in listed("BEFORE_CREATED_AT", str(created)), "before is strict")
    check("test10" in listed("AFTER_CREATED_AT", str(created - 1)), "after")
    msg = client_error(batch.list_jobs, jobQueue="jq", filters=[{"name": "JOB_NAME", "values": ["a"]},
                                                                 {"name": "JOB_NAME", "values": ["b"]}])
    check("one filter" in msg, msg)


def images():
    """A definition's image and jobRoleArn are where its job runs (shown back by
    DescribeJobs); what Batchplane cannot honour is refused at registration, naming the
    field, instead of being stored and ignored."""
    setup()
    role = "arn:aws:iam::123456789012:role/batch-reader"
    batch.register_job_definition(
        jobDefinitionName="in-image", type="container",
        containerProperties={"image": "public.ecr.aws/docker/library/python:3.12-slim",
                             "jobRoleArn": role, "command": ["sh", "-c", "echo ran"],
                             "resourceRequirements": [{"type": "VCPU", "value": "0.5"},
                                                      {"type": "MEMORY", "value": "128"}]})
    job = batch.submit_job(jobName="in-image", jobQueue="jq", jobDefinition="in-image")["jobId"]
    done = wait(job)
    check(done["status"] == "SUCCEEDED", done)
    check(done["container"]["image"] == "public.ecr.aws/docker/library/python:3.12-slim", done["container"])
    check(done["container"]["jobRoleArn"] == role, done["container"])
    for field, value in (("privileged", True), ("volumes", [{"name": "data", "host": {"sourcePath": "/data"}}]),
                         ("user", "root"), ("secrets", [{"name": "A", "valueFrom": "arn:aws:ssm:::parameter/a"}]),
                         ("linuxParameters", {"sharedMemorySize": 64})):
        msg = client_error(batch.register_job_definition, jobDefinitionName="refused", type="container",
                           containerProperties={"image": "busybox", "command": ["true"], field: value})
        check(f"containerProperties.{field}" in msg and "not supported" in msg, msg)
    msg = client_error(batch.register_job_definition, jobDefinitionName="refused", type="container",
                       containerProperties={"image": "Bad Image!", "command": ["true"]})
    check("containerProperties.image" in msg, msg)
    msg = client_error(batch.register_job_definition, jobDefinitionName="refused", type="container",
                       containerProperties={"image": "busybox", "jobRoleArn": "reader", "command": ["true"]})
    check("containerProperties.jobRoleArn" in msg, msg)
    msg = client_error(batch.register_job_definition, jobDefinitionName="refused", type="container",
                       containerProperties={"image": "busybox", "command": ["true"],
                                            "jobRoleArn": "arn:aws:iam::123456789012:role/not-listed"})
    check("containerProperties.jobRoleArn" in msg and "not a job role of this deployment" in msg, msg)
    msg = client_error(batch.register_job_definition, jobDefinitionName="refused", type="container",
                       platformCapabilities=["FARGATE"],
                       containerProperties={"image": "busybox", "command": ["true"]})
    check("platformCapabilities" in msg and "FARGATE" in msg, msg)
    # None of the refused registrations left a definition behind.
    check(batch.describe_job_definitions(jobDefinitionName="refused")["jobDefinitions"] == [], "refused stored")


def cli():
    setup()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIDCLI", AWS_SECRET_ACCESS_KEY="secret",
               AWS_DEFAULT_REGION="us-east-1")
    aws = os.path.join(os.path.dirname(sys.executable), "aws")

    def run(*args):
        out = subprocess.run([aws, "batch", *args, "--endpoint-url", URL, "--output", "json"],
                             env=env, capture_output=True, text=True)
        check(out.returncode == 0, f"aws batch {' '.join(args)}: {out.stderr}")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    queues = run("describe-job-queues")["jobQueues"]
    check([q["jobQueueName"] for q in queues] == ["jq"], queues)
    job = run("submit-job", "--job-name", "from-cli", "--job-queue", "jq", "--job-definition", "sh",
              "--parameters", "script=exit 0", "--array-properties", "size=3")
    check(job["jobName"] == "from-cli", job)
    wait(job["jobId"])
    listed = run("list-jobs", "--job-queue", "jq", "--job-status", "SUCCEEDED")["jobSummaryList"]
    check([x["jobId"] for x in listed] == [job["jobId"]], listed)
    got = run("describe-jobs", "--jobs", job["jobId"])["jobs"][0]
    check(got["status"] == "SUCCEEDED" and got["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3, got)
    bad = subprocess.run([aws, "batch", "submit-job", "--job-name", "x", "--job-queue", "nope",
                          "--job-definition", "sh", "--endpoint-url", URL], env=env, capture_output=True, text=True)
    check(bad.returncode != 0 and "ClientException" in bad.stderr and "nope" in bad.stderr, bad.stderr)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
    print(f"{sys.argv[1]}: ok")
