//! The Kubernetes backend against a mock API server (`tower-test`): each scenario checks
//! the exact requests the backend makes (create, list by label, delete) and answers them
//! as a real API server would, errors included (409, 403, 404, 5xx).

use batchplane::domain::tiers::Tier;
use batchplane::scaling::launcher::{
    BackendError, CapacityType, WorkerBackend, WorkerPhase, WorkerSpec,
};
use batchplane::store::placement::ClusterRecord;
use batchplane_kubernetes::{KubernetesBackend, PodSettings};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use std::collections::BTreeMap;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const ROLE: &str = "arn:aws:iam::123456789012:role/batch-job-reader";

fn backend() -> (KubernetesBackend, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let settings = PodSettings {
        image: "123456789012.dkr.ecr.us-east-1.amazonaws.com/taskhost:1.4".into(),
        taskhost_path: "/taskhost".into(),
        service_account: "batchplane-taskhost".into(),
        job_role_service_accounts: BTreeMap::from([(
            ROLE.to_string(),
            "batch-job-reader".to_string(),
        )]),
        termination_grace: std::time::Duration::from_secs(900),
    };
    (KubernetesBackend::with_client(client, settings), handle)
}

fn cluster() -> ClusterRecord {
    ClusterRecord {
        name: "east".into(),
        kind: "eks".into(),
        region: "us-east-1".into(),
        eks_cluster_name: "batch-east".into(),
        endpoint: "https://ABC.gr7.us-east-1.eks.amazonaws.com".into(),
        namespace: "batchplane".into(),
        enabled: true,
        ..Default::default()
    }
}

fn spec(slots: Vec<u32>) -> WorkerSpec {
    WorkerSpec {
        team: "vision".into(),
        pool: "default--2cpu-8192mib-1gpu".into(),
        queues: vec!["default".into()],
        shape: Tier {
            cpu_milli: 2500,
            memory_mib: 8192,
            gpu: 1,
        },
        tier: Some(Tier {
            cpu_milli: 2000,
            memory_mib: 8192,
            gpu: 1,
        }),
        gpu_type: Some("a100".into()),
        reservation_id: "east.autoscaler-42".into(),
        slots,
        capacity_type: Some(CapacityType::Spot),
        instance_type: Some("p4d.24xlarge".into()),
        env: BTreeMap::from([("BATCHPLANE_TABLE".to_string(), "batchplane".to_string())]),
        container: None,
        any_container: false,
    }
}

async fn body_json(request: Request<Body>) -> Value {
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("the request body");
    serde_json::from_slice(&bytes).expect("a JSON request body")
}

fn respond(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
        .expect("a response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

#[tokio::test]
async fn launch_creates_one_pod_per_slot_with_resources_labels_and_placement() {
    let (backend, mut api) = backend();
    let server = tokio::spawn(async move {
        let mut names = Vec::new();
        for slot in [0, 1] {
            let (request, send) = api.next_request().await.expect("a create request");
            assert_eq!(request.method(), Method::POST);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/batchplane/pods");
            let pod = body_json(request).await;
            let meta = &pod["metadata"];
            let name = meta["name"].as_str().expect("a pod name").to_string();
            assert!(
                name.starts_with("bp-default-2cpu-8192mib-1gpu-autoscaler-42-"),
                "{name}"
            );
            assert!(name.ends_with(&format!("-{slot}")), "{name}");
            assert_eq!(meta["namespace"], "batchplane");
            let labels = &meta["labels"];
            assert_eq!(labels["app.kubernetes.io/managed-by"], "batchplane");
            assert_eq!(labels["batchplane.io/team"], "vision");
            assert_eq!(labels["batchplane.io/cost-center"], "vision");
            assert_eq!(labels["batchplane.io/pool"], "default--2cpu-8192mib-1gpu");
            assert_eq!(labels["batchplane.io/reservation"], "east.autoscaler-42");
            assert_eq!(labels["batchplane.io/slot"], slot.to_string());
            assert_eq!(labels["batchplane.io/capacity-type"], "spot");
            assert_eq!(
                meta["annotations"]["batchplane.io/reservation-id"],
                "east.autoscaler-42"
            );
            let spec = &pod["spec"];
            assert_eq!(spec["restartPolicy"], "Never");
            assert_eq!(spec["serviceAccountName"], "batchplane-taskhost");
            assert_eq!(
                spec["automountServiceAccountToken"], false,
                "no API token for tasks to find"
            );
            assert_eq!(spec["terminationGracePeriodSeconds"], 900);
            assert_eq!(
                spec["nodeSelector"],
                json!({"batchplane.io/capacity-type": "spot",
                       "node.kubernetes.io/instance-type": "p4d.24xlarge",
                       "batchplane.io/gpu-type": "a100"})
            );
            let tolerations: Vec<&str> = spec["tolerations"]
                .as_array()
                .expect("tolerations")
                .iter()
                .map(|t| t["key"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(tolerations, ["batchplane.io/spot", "nvidia.com/gpu"]);
            let c = &spec["containers"][0];
            assert_eq!(
                c["image"],
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/taskhost:1.4"
            );
            // A pool of the deployment's image runs the taskhost image's own taskhost.
            assert_eq!(c["command"], json!(["taskhost"]));
            assert!(spec.get("initContainers").is_none(), "{spec}");
            assert!(spec.get("volumes").is_none(), "{spec}");
            let want = json!({"cpu": "2500m", "memory": "8192Mi", "nvidia.com/gpu": "1"});
            assert_eq!(c["resources"]["requests"], want);
            assert_eq!(c["resources"]["limits"], want);
            let args: Vec<&str> = c["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let args = args.join(" ");
            assert!(
                args.contains(&format!("--reservation east.autoscaler-42 --slot {slot}")),
                "{args}"
            );
            assert!(args.contains("--tier 2:8192:1"), "{args}");
            assert!(args.contains(&format!("--worker-id {name}")), "{args}");
            let env: Vec<&str> = c["env"]
                .as_array()
                .expect("env")
                .iter()
                .filter_map(|e| e["name"].as_str())
                .collect();
            assert_eq!(
                env,
                [
                    "BATCHPLANE_TABLE",
                    "BATCHPLANE_CLUSTER",
                    "BATCHPLANE_NODE_NAME"
                ]
            );
            names.push(name);
            send.send_response(respond(201, pod));
        }
        names
    });
    let workers = backend
        .launch(&cluster(), &spec(vec![0, 1]))
        .await
        .expect("the pods are created");
    let names = server.await.expect("the API server scenario");
    assert_eq!(
        workers.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
        names
    );
    assert!(workers
        .iter()
        .all(|w| w.phase == WorkerPhase::Pending && w.cluster == "east"));
}

#[tokio::test]
async fn a_pod_that_exists_already_is_not_an_error_but_forbidden_and_5xx_are() {
    let (backend, mut api) = backend();
    let server = tokio::spawn(async move {
        // Slot 0 was created by an earlier try: 409; slot 1 is created.
        let (_, send) = api.next_request().await.expect("create slot 0");
        send.send_response(respond(
            409,
            status(409, "AlreadyExists", "pods \"x\" already exists"),
        ));
        let (request, send) = api.next_request().await.expect("create slot 1");
        let pod = body_json(request).await;
        send.send_response(respond(201, pod));
        // RBAC denies: the launch stops at the first pod.
        let (_, send) = api.next_request().await.expect("create, forbidden");
        send.send_response(respond(
            403,
            status(
                403,
                "Forbidden",
                "pods is forbidden: User \"batchplane\" cannot create resource \"pods\"",
            ),
        ));
        // The API server is overloaded.
        let (_, send) = api.next_request().await.expect("create, unavailable");
        send.send_response(respond(
            503,
            status(503, "ServiceUnavailable", "etcd leader changed"),
        ));
    });
    let workers = backend
        .launch(&cluster(), &spec(vec![0, 1]))
        .await
        .expect("launch with a 409");
    assert_eq!(workers.len(), 2);
    match backend.launch(&cluster(), &spec(vec![2, 3])).await {
        Err(BackendError::Forbidden { action, message }) => {
            assert!(action.starts_with("create pod bp-"), "{action}");
            assert!(message.contains("cannot create resource"), "{message}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    match backend.launch(&cluster(), &spec(vec![4])).await {
        Err(BackendError::Unavailable { message, .. }) => {
            assert!(
                message.contains("503") && message.contains("etcd leader changed"),
                "{message}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    server.await.expect("the API server scenario");
}

#[tokio::test]
async fn list_selects_by_label_and_reads_each_pods_phase() {
    let (backend, mut api) = backend();
    let server = tokio::spawn(async move {
        let (request, send) = api.next_request().await.expect("a list request");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/api/v1/namespaces/batchplane/pods");
        let query = request.uri().query().unwrap_or_default().to_string();
        let selector: String = url_decode(
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix("labelSelector="))
                .expect("a label selector"),
        );
        assert_eq!(
            selector,
            "app.kubernetes.io/managed-by=batchplane,batchplane.io/pool=default--2cpu-8192mib-1gpu"
        );
        let pod = |name: &str, slot: u32, phase: &str| {
            json!({"metadata": {"name": name, "labels": {
                        "app.kubernetes.io/managed-by": "batchplane", "batchplane.io/team": "vision",
                        "batchplane.io/pool": "default--2cpu-8192mib-1gpu",
                        "batchplane.io/reservation": "east.autoscaler-42", "batchplane.io/slot": slot.to_string()},
                    "annotations": {"batchplane.io/pool-name": "default--2cpu-8192mib-1gpu",
                        "batchplane.io/reservation-id": "east.autoscaler-42"}},
                   "spec": {"containers": [], "nodeName": format!("ip-10-0-0-{slot}.ec2.internal")},
                   "status": {"phase": phase}})
        };
        send.send_response(respond(
            200,
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                   "items": [pod("w0", 0, "Running"), pod("w1", 1, "Succeeded"), pod("w2", 2, "Failed"),
                             {"metadata": {"name": "stray", "labels": {"app.kubernetes.io/managed-by": "batchplane"}}}]}),
        ));
    });
    let workers = backend
        .list(&cluster(), Some("default--2cpu-8192mib-1gpu"))
        .await
        .expect("the list");
    server.await.expect("the API server scenario");
    let seen: Vec<(&str, u32, WorkerPhase)> = workers
        .iter()
        .map(|w| (w.name.as_str(), w.slot, w.phase))
        .collect();
    // The pod without Batchplane's labels is not a worker.
    assert_eq!(
        seen,
        [
            ("w0", 0, WorkerPhase::Running),
            ("w1", 1, WorkerPhase::Succeeded),
            ("w2", 2, WorkerPhase::Failed)
        ]
    );
    assert!(workers
        .iter()
        .all(|w| w.reservation_id == "east.autoscaler-42" && w.team == "vision"));
    assert_eq!(workers[1].node.as_deref(), Some("ip-10-0-0-1.ec2.internal"));
}

#[tokio::test]
async fn cordon_patches_the_node_unschedulable_and_a_gone_node_is_done() {
    let (backend, mut api) = backend();
    let server = tokio::spawn(async move {
        let (request, send) = api.next_request().await.expect("a patch");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/api/v1/nodes/ip-10-0-0-7.ec2.internal"
        );
        assert_eq!(
            request
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/merge-patch+json")
        );
        assert_eq!(
            body_json(request).await,
            json!({"spec": {"unschedulable": true}})
        );
        send.send_response(respond(
            200,
            json!({"metadata": {"name": "ip-10-0-0-7.ec2.internal"}, "spec": {"unschedulable": true}}),
        ));
        let (_, send) = api.next_request().await.expect("a patch of a gone node");
        send.send_response(respond(
            404,
            status(404, "NotFound", "nodes \"x\" not found"),
        ));
        let (_, send) = api.next_request().await.expect("a forbidden patch");
        send.send_response(respond(403, status(403, "Forbidden", "cannot patch nodes")));
    });
    backend
        .cordon(&cluster(), "ip-10-0-0-7.ec2.internal")
        .await
        .expect("cordoned");
    backend.cordon(&cluster(), "x").await.expect("gone already");
    assert!(matches!(
        backend.cordon(&cluster(), "y").await,
        Err(BackendError::Forbidden { .. })
    ));
    server.await.expect("the API server scenario");
}

#[tokio::test]
async fn terminate_deletes_the_pod_and_a_missing_pod_is_already_done() {
    let (backend, mut api) = backend();
    let server = tokio::spawn(async move {
        let (request, send) = api.next_request().await.expect("a delete");
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/batchplane/pods/w0"
        );
        send.send_response(respond(
            200,
            json!({"metadata": {"name": "w0"}, "status": {"phase": "Running"}}),
        ));
        let (request, send) = api.next_request().await.expect("a delete of a gone pod");
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/batchplane/pods/gone"
        );
        send.send_response(respond(
            404,
            status(404, "NotFound", "pods \"gone\" not found"),
        ));
        let (_, send) = api.next_request().await.expect("a delete that fails");
        send.send_response(respond(500, status(500, "InternalError", "boom")));
    });
    backend.terminate(&cluster(), "w0").await.expect("deleted");
    backend
        .terminate(&cluster(), "gone")
        .await
        .expect("gone already");
    assert!(matches!(
        backend.terminate(&cluster(), "w1").await,
        Err(BackendError::Unavailable { .. })
    ));
    server.await.expect("the API server scenario");
}

fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() + 1 => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The autoscaler's EKS backend asks EKS (moto here) where a cluster is before it mints
/// a token: a record naming another endpoint is refused before any token is made.
#[tokio::test]
async fn an_eks_token_goes_only_to_the_endpoint_eks_reports() {
    let emulators = batchplane_testing::TestEmulators::get();
    let settings = PodSettings {
        image: "taskhost:1".into(),
        termination_grace: std::time::Duration::from_secs(30),
        ..PodSettings::default()
    };
    let backend = KubernetesBackend::eks(settings).asking_eks_at(Some(emulators.sqs_url.clone()));
    let mut c = cluster();
    c.eks_cluster_name = format!("never-created-{}", uuid_like());
    let err = backend
        .list(&c, None)
        .await
        .expect_err("no such EKS cluster");
    assert!(
        matches!(&err, BackendError::Unavailable { message, .. } if message.contains("no cluster named")),
        "{err:?}"
    );
    // A cluster EKS knows, whose record names another endpoint.
    let shared = batchplane::aws::sdk_config(&batchplane::aws::Endpoints {
        eks: Some(emulators.sqs_url.clone()),
        ..Default::default()
    })
    .await;
    let eks = aws_sdk_eks::Client::from_conf(
        aws_sdk_eks::config::Builder::from(&shared)
            .endpoint_url(&emulators.sqs_url)
            .build(),
    );
    c.eks_cluster_name = format!("real-{}", uuid_like());
    eks.create_cluster()
        .name(&c.eks_cluster_name)
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .subnet_ids("subnet-1")
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating the cluster in moto: {e:?}"));
    c.endpoint = "https://attacker.example.com".into();
    let err = backend
        .list(&c, None)
        .await
        .expect_err("a foreign endpoint");
    assert!(
        matches!(&err, BackendError::Rejected { message, .. } if message.contains("re-register")),
        "{err:?}"
    );
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A pod of a pool whose tasks name an image runs that image, with the taskhost copied
/// in by an init container of the taskhost image into a shared `emptyDir`; the job
/// role's service account is the pod's.
#[tokio::test]
async fn a_task_image_runs_with_the_taskhost_injected_and_its_job_roles_service_account() {
    let (backend, mut api) = backend();
    let container = batchplane::domain::containers::Container {
        image: "gcr.io/distroless/python3-debian12:nonroot".into(),
        job_role_arn: Some(ROLE.into()),
    };
    let key = container.key();
    let server = tokio::spawn(async move {
        let (request, send) = api.next_request().await.expect("a create request");
        let pod = body_json(request).await;
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], "batch-job-reader");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            spec["volumes"],
            json!([{"name": "batchplane-taskhost", "emptyDir": {}}])
        );
        let init = spec["initContainers"].as_array().expect("init containers");
        assert_eq!(init.len(), 1);
        assert_eq!(init[0]["name"], "install-taskhost");
        assert_eq!(
            init[0]["image"],
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/taskhost:1.4"
        );
        assert_eq!(
            init[0]["command"],
            json!(["/taskhost", "install", "/batchplane/bin/taskhost"])
        );
        assert_eq!(
            init[0]["volumeMounts"],
            json!([{"name": "batchplane-taskhost", "mountPath": "/batchplane/bin"}])
        );
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "gcr.io/distroless/python3-debian12:nonroot");
        assert_eq!(c["command"], json!(["/batchplane/bin/taskhost"]));
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "batchplane-taskhost", "mountPath": "/batchplane/bin", "readOnly": true}])
        );
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let args = args.join(" ");
        assert!(args.contains(&format!("--container {key}")), "{args}");
        assert!(args.ends_with("--in-image"), "{args}");
        assert_eq!(pod["metadata"]["labels"]["batchplane.io/container"], key);
        // The task's resources are the pod's; the copy takes a sliver of its own.
        assert_eq!(c["resources"]["limits"]["cpu"], "2500m");
        assert_eq!(init[0]["resources"]["limits"]["memory"], "64Mi");
        send.send_response(respond(201, pod));
    });
    let mut s = spec(vec![0]);
    s.container = Some(container);
    backend
        .launch(&cluster(), &s)
        .await
        .expect("the pod is created");
    server.await.expect("the API server scenario");
}

/// A job role with no service account is refused before any request: the pod would
/// run the tasks with the wrong credentials.
#[tokio::test]
async fn a_job_role_without_a_service_account_starts_no_pod() {
    let (backend, api) = backend();
    let mut s = spec(vec![0]);
    s.container = Some(batchplane::domain::containers::Container {
        image: "python:3.12".into(),
        job_role_arn: Some("arn:aws:iam::123456789012:role/unmapped".into()),
    });
    let err = backend
        .launch(&cluster(), &s)
        .await
        .expect_err("an unmapped role is refused");
    assert!(
        matches!(&err, BackendError::Rejected { message, .. } if message.contains("role/unmapped")),
        "{err}"
    );
    drop(api);
}
