//! The Kubernetes worker backend: one taskhost pod per granted placement slot, in the
//! granted EKS cluster. Pods request (and are limited to) the worker's size, carry labels
//! for team, pool and cost accounting, select spot or on-demand nodes of an instance type,
//! tolerate the GPU and spot taints, and run under a service account with the taskhost's
//! configuration in their environment. Calls to EKS authenticate with a token minted from
//! the caller's AWS credentials ([`token`]).

pub mod token;

use batchplane::scaling::launcher::{
    worker_name, BackendError, CapacityType, LaunchedWorker, WorkerBackend, WorkerPhase, WorkerSpec,
};
use batchplane::store::placement::ClusterRecord;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec,
    ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Label keys on every worker pod.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const TEAM: &str = "batchplane.io/team";
    pub const POOL: &str = "batchplane.io/pool";
    pub const RESERVATION: &str = "batchplane.io/reservation";
    pub const SLOT: &str = "batchplane.io/slot";
    pub const CLUSTER: &str = "batchplane.io/cluster";
    pub const CAPACITY_TYPE: &str = "batchplane.io/capacity-type";
    /// The key of the container (image and job role) the pod runs its tasks in.
    pub const CONTAINER: &str = "batchplane.io/container";
    /// For cost-allocation reports: who pays for the pod.
    pub const COST_CENTER: &str = "batchplane.io/cost-center";
    /// Node labels and taints the pods select and tolerate.
    pub const NODE_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
    pub const NODE_GPU_TYPE: &str = "batchplane.io/gpu-type";
    pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
    pub const SPOT_TAINT: &str = "batchplane.io/spot";
    /// Annotations with the exact (unsanitised) values.
    pub const POOL_ANNOTATION: &str = "batchplane.io/pool-name";
    pub const RESERVATION_ANNOTATION: &str = "batchplane.io/reservation-id";
}

const MANAGED_BY: &str = "batchplane";
const TASKHOST: &str = "taskhost";

/// How worker pods are made, beyond what a placement says.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    /// The taskhost image: a static taskhost binary at [`PodSettings::taskhost_path`].
    /// Pools whose tasks name no image run in it; the others run in their tasks' image,
    /// with the taskhost copied in from this one by an init container.
    pub image: String,
    /// Where the taskhost binary is in [`PodSettings::image`].
    pub taskhost_path: String,
    /// The service account of pods whose tasks have no job role.
    pub service_account: String,
    /// The service account (annotated with its IAM role, EKS's IRSA) each job role ARN
    /// runs as. A pool whose job role has none here is not started.
    pub job_role_service_accounts: BTreeMap<String, String>,
    /// How long a deleted pod has to finish its running tasks before it is killed.
    pub termination_grace: Duration,
}

impl Default for PodSettings {
    fn default() -> Self {
        PodSettings {
            image: "public.ecr.aws/batchplane/taskhost:latest".into(),
            taskhost_path: "/taskhost".into(),
            service_account: "batchplane-taskhost".into(),
            job_role_service_accounts: BTreeMap::new(),
            termination_grace: Duration::from_secs(3600),
        }
    }
}

/// Where a pod running a task's image finds the taskhost its init container put there.
pub const INJECTED_TASKHOST_DIR: &str = "/batchplane/bin";
const INJECTED_VOLUME: &str = "batchplane-taskhost";
const INSTALLER: &str = "install-taskhost";

impl PodSettings {
    /// The service account a pod of `spec` runs as: its job role's, or the default.
    pub fn service_account_for(&self, spec: &WorkerSpec) -> Result<String, BackendError> {
        match spec.container.as_ref().and_then(|c| c.job_role_arn.as_ref()) {
            None => Ok(self.service_account.clone()),
            Some(role) => self
                .job_role_service_accounts
                .get(role)
                .cloned()
                .ok_or_else(|| BackendError::Rejected {
                    action: format!("starting a worker of pool {}", spec.pool),
                    message: format!(
                        "job role {role} has no service account (JobRoleServiceAccounts maps each job role to one)"
                    ),
                }),
        }
    }
}

/// A label value: at most 63 of `[A-Za-z0-9-_.]`, starting and ending alphanumeric.
pub fn label_value(v: &str) -> String {
    let mut s: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// CPU in thousandths as a Kubernetes quantity (`2`, `500m`).
fn cpu_quantity(milli: u32) -> Quantity {
    if milli.is_multiple_of(1000) {
        Quantity((milli / 1000).to_string())
    } else {
        Quantity(format!("{milli}m"))
    }
}

/// The pod for one slot of a placement: the taskhost image's own taskhost for a pool
/// of the deployment's image, or the task's image running an injected taskhost (an
/// init container of the taskhost image copies it into an `emptyDir` volume), as the
/// job role's service account.
pub fn worker_pod(
    cluster: &ClusterRecord,
    spec: &WorkerSpec,
    slot: u32,
    settings: &PodSettings,
) -> Result<Pod, BackendError> {
    let service_account = settings.service_account_for(spec)?;
    let name = worker_name(&spec.pool, &spec.reservation_id, slot);
    let mut pod_labels = BTreeMap::from([
        (labels::NAME.to_string(), TASKHOST.to_string()),
        (labels::MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (labels::TEAM.to_string(), label_value(&spec.team)),
        (labels::COST_CENTER.to_string(), label_value(&spec.team)),
        (labels::POOL.to_string(), label_value(&spec.pool)),
        (
            labels::RESERVATION.to_string(),
            label_value(&spec.reservation_id),
        ),
        (labels::SLOT.to_string(), slot.to_string()),
        (labels::CLUSTER.to_string(), label_value(&cluster.name)),
    ]);
    let mut node_selector = BTreeMap::new();
    let mut tolerations = Vec::new();
    if let Some(ct) = spec.capacity_type {
        pod_labels.insert(labels::CAPACITY_TYPE.into(), ct.as_str().into());
        node_selector.insert(labels::CAPACITY_TYPE.to_string(), ct.as_str().to_string());
        if ct == CapacityType::Spot {
            tolerations.push(Toleration {
                key: Some(labels::SPOT_TAINT.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            });
        }
    }
    if let Some(it) = &spec.instance_type {
        node_selector.insert(labels::NODE_INSTANCE_TYPE.to_string(), it.clone());
    }
    let mut resources = BTreeMap::from([
        ("cpu".to_string(), cpu_quantity(spec.shape.cpu_milli)),
        (
            "memory".to_string(),
            Quantity(format!("{}Mi", spec.shape.memory_mib)),
        ),
    ]);
    if spec.shape.gpu > 0 {
        resources.insert(
            labels::GPU_RESOURCE.into(),
            Quantity(spec.shape.gpu.to_string()),
        );
        tolerations.push(Toleration {
            key: Some(labels::GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
        if let Some(t) = &spec.gpu_type {
            node_selector.insert(labels::NODE_GPU_TYPE.to_string(), t.clone());
        }
    }
    let mut env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    env.push(EnvVar {
        name: "BATCHPLANE_CLUSTER".into(),
        value: Some(cluster.name.clone()),
        ..Default::default()
    });
    env.push(EnvVar {
        name: "BATCHPLANE_NODE_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let resources = ResourceRequirements {
        requests: Some(resources.clone()),
        limits: Some(resources),
        ..Default::default()
    };
    let mut args = spec.taskhost_args(slot, &name);
    let (image, command, init, volumes) = match &spec.container {
        None => (settings.image.clone(), TASKHOST.to_string(), None, None),
        Some(c) => {
            args.push("--in-image".into());
            let mount = VolumeMount {
                name: INJECTED_VOLUME.into(),
                mount_path: INJECTED_TASKHOST_DIR.into(),
                ..Default::default()
            };
            let installer = Container {
                name: INSTALLER.into(),
                image: Some(settings.image.clone()),
                command: Some(vec![
                    settings.taskhost_path.clone(),
                    "install".into(),
                    format!("{INJECTED_TASKHOST_DIR}/{TASKHOST}"),
                ]),
                volume_mounts: Some(vec![mount.clone()]),
                // Copying a file: a sliver of the pod's own request.
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity("100m".into())),
                        ("memory".to_string(), Quantity("64Mi".into())),
                    ])),
                    limits: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity("100m".into())),
                        ("memory".to_string(), Quantity("64Mi".into())),
                    ])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let volume = Volume {
                name: INJECTED_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            };
            (
                c.image.clone(),
                format!("{INJECTED_TASKHOST_DIR}/{TASKHOST}"),
                Some((
                    installer,
                    VolumeMount {
                        read_only: Some(true),
                        ..mount
                    },
                )),
                Some(vec![volume]),
            )
        }
    };
    let (init_containers, volume_mounts) = match init {
        Some((installer, mount)) => (Some(vec![installer]), Some(vec![mount])),
        None => (None, None),
    };
    if let Some(c) = &spec.container {
        pod_labels.insert(labels::CONTAINER.into(), c.key());
    }
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([
                (labels::POOL_ANNOTATION.to_string(), spec.pool.clone()),
                (
                    labels::RESERVATION_ANNOTATION.to_string(),
                    spec.reservation_id.clone(),
                ),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            service_account_name: Some(service_account),
            // The taskhost needs AWS credentials (its service account's IAM role), not
            // the Kubernetes API: no API token for a task to find on the pod.
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(settings.termination_grace.as_secs() as i64),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            init_containers,
            volumes,
            containers: vec![Container {
                name: TASKHOST.into(),
                image: Some(image),
                command: Some(vec![command]),
                args: Some(args),
                env: Some(env),
                resources: Some(resources),
                volume_mounts,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A pod as a launched worker (`None` for a pod without Batchplane's labels).
fn worker_of(pod: &Pod, cluster: &str) -> Option<LaunchedWorker> {
    let meta = &pod.metadata;
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
    let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => WorkerPhase::Pending,
        Some("Running") => WorkerPhase::Running,
        Some("Succeeded") => WorkerPhase::Succeeded,
        Some("Failed") => WorkerPhase::Failed,
        _ => WorkerPhase::Unknown,
    };
    Some(LaunchedWorker {
        name: meta.name.clone()?,
        cluster: cluster.to_string(),
        team: label(labels::TEAM)?,
        pool: annotation(labels::POOL_ANNOTATION).or_else(|| label(labels::POOL))?,
        reservation_id: annotation(labels::RESERVATION_ANNOTATION)
            .or_else(|| label(labels::RESERVATION))?,
        slot: label(labels::SLOT)?.parse().ok()?,
        phase,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    })
}

/// Sort a Kubernetes error into what the launcher acts on.
fn classify(action: String, e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(status) => match status.code {
            409 => BackendError::AlreadyExists { what: action },
            401 | 403 => BackendError::Forbidden {
                action,
                message: status.message,
            },
            429 | 500..=599 => BackendError::Unavailable {
                action,
                message: format!("{} {}: {}", status.code, status.reason, status.message),
                source: Some(Box::new(kube::Error::Api(status))),
            },
            _ => BackendError::Rejected {
                action,
                message: format!("{} {}: {}", status.code, status.reason, status.message),
            },
        },
        other => BackendError::Unavailable {
            action,
            message: other.to_string(),
            source: Some(Box::new(other)),
        },
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Where the backend's Kubernetes clients come from.
enum Clients {
    /// One client for every cluster (in-cluster use, tests with a mock API server).
    Fixed(kube::Client),
    /// EKS: a client per cluster, from its registration and a token minted from the
    /// default AWS credentials, reused until shortly before the token lapses.
    Eks(Mutex<HashMap<String, (kube::Client, Instant)>>),
}

/// EKS tokens are good for 15 minutes; a cached client is replaced well before.
const CLIENT_REUSE: Duration = Duration::from_secs(10 * 60);

/// Taskhost pods in Kubernetes clusters.
pub struct KubernetesBackend {
    clients: Clients,
    pub settings: PodSettings,
    /// Where EKS is asked for a cluster's endpoint and certificate (`None`: AWS's own).
    pub eks_endpoint: Option<String>,
}

impl KubernetesBackend {
    /// A backend that reaches every cluster through `client`.
    pub fn with_client(client: kube::Client, settings: PodSettings) -> KubernetesBackend {
        KubernetesBackend {
            clients: Clients::Fixed(client),
            settings,
            eks_endpoint: None,
        }
    }

    /// A backend for EKS clusters, authenticating with the default AWS credentials.
    pub fn eks(settings: PodSettings) -> KubernetesBackend {
        KubernetesBackend {
            clients: Clients::Eks(Mutex::new(HashMap::new())),
            settings,
            eks_endpoint: None,
        }
    }

    async fn client(&self, cluster: &ClusterRecord) -> Result<kube::Client, BackendError> {
        let cache = match &self.clients {
            Clients::Fixed(c) => return Ok(c.clone()),
            Clients::Eks(cache) => cache,
        };
        if let Some((c, at)) = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cluster.name)
        {
            if at.elapsed() < CLIENT_REUSE {
                return Ok(c.clone());
            }
        }
        let unavailable = |message: String| BackendError::Unavailable {
            action: format!("connect to cluster {}", cluster.name),
            message,
            source: None,
        };
        // The token goes only where EKS itself says the cluster is, whatever the
        // registration says now.
        let cluster = &self.as_eks_reports(cluster).await?;
        let credentials = token::default_credentials()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let token = token::eks_token(
            &credentials,
            &cluster.region,
            &cluster.eks_cluster_name,
            std::time::SystemTime::now(),
        )
        .map_err(|e| unavailable(e.to_string()))?;
        let client = eks_client(cluster, &token)?;
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.name.clone(), (client.clone(), Instant::now()));
        Ok(client)
    }
}

impl KubernetesBackend {
    /// The same backend, asking EKS at `endpoint` (moto, in tests) instead of AWS's.
    pub fn asking_eks_at(mut self, endpoint: Option<String>) -> KubernetesBackend {
        self.eks_endpoint = endpoint;
        self
    }

    /// The cluster's record with the endpoint and certificate EKS reports for its name;
    /// refused if the registration names another endpoint or certificate.
    async fn as_eks_reports(&self, cluster: &ClusterRecord) -> Result<ClusterRecord, BackendError> {
        use batchplane::aws::eks::{describe_cluster, verified};
        let action = format!("check cluster {} with EKS", cluster.name);
        let endpoints = batchplane::aws::Endpoints {
            eks: self.eks_endpoint.clone(),
            ..Default::default()
        };
        let reported = describe_cluster(&endpoints, &cluster.region, &cluster.eks_cluster_name)
            .await
            .map_err(|e| BackendError::Unavailable {
                action: action.clone(),
                message: e.to_string(),
                source: None,
            })?;
        let registration = batchplane::store::placement::ClusterRegistration {
            kind: cluster.kind.clone(),
            region: cluster.region.clone(),
            eks_cluster_name: cluster.eks_cluster_name.clone(),
            endpoint: cluster.endpoint.clone(),
            certificate_authority: cluster.certificate_authority.clone(),
            namespace: cluster.namespace.clone(),
            capacity: cluster.capacity.clone(),
        };
        let checked = verified(registration, &reported).map_err(|e| BackendError::Rejected {
            action,
            message: format!("{e}; re-register the cluster"),
        })?;
        Ok(ClusterRecord {
            endpoint: checked.endpoint,
            certificate_authority: checked.certificate_authority,
            ..cluster.clone()
        })
    }
}

/// A client for a registered EKS cluster with a bearer token.
pub fn eks_client(cluster: &ClusterRecord, token: &str) -> Result<kube::Client, BackendError> {
    let rejected = |message: String| BackendError::Rejected {
        action: format!("configure a client for cluster {}", cluster.name),
        message,
    };
    let url: http::Uri = cluster
        .endpoint
        .parse()
        .map_err(|e| rejected(format!("endpoint {:?}: {e}", cluster.endpoint)))?;
    let mut config = kube::Config::new(url);
    config.default_namespace = cluster.namespace.clone();
    if let Some(ca) = &cluster.certificate_authority {
        config.root_cert = Some(pem_certificates(ca).map_err(rejected)?);
    }
    let mut bearer = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| rejected(format!("token: {e}")))?;
    bearer.set_sensitive(true);
    config.headers.push((http::header::AUTHORIZATION, bearer));
    kube::Client::try_from(config).map_err(|e| rejected(e.to_string()))
}

/// DER certificates from a base64 PEM bundle (EKS's `certificateAuthority.data`).
pub fn pem_certificates(b64: &str) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let pem = engine
        .decode(b64.trim())
        .map_err(|e| format!("certificate_authority is not base64: {e}"))?;
    let pem = String::from_utf8(pem)
        .map_err(|_| "certificate_authority is not a PEM text".to_string())?;
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match (line, &mut body) {
            ("-----BEGIN CERTIFICATE-----", None) => body = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(b)) => {
                certs.push(
                    engine
                        .decode(b.as_bytes())
                        .map_err(|e| format!("a certificate in certificate_authority: {e}"))?,
                );
                body = None;
            }
            (l, Some(b)) => b.push_str(l),
            _ => {}
        }
    }
    if certs.is_empty() {
        return Err("certificate_authority holds no PEM certificate".into());
    }
    Ok(certs)
}

impl WorkerBackend for KubernetesBackend {
    async fn launch(
        &self,
        cluster: &ClusterRecord,
        spec: &WorkerSpec,
    ) -> Result<Vec<LaunchedWorker>, BackendError> {
        let pods: Api<Pod> = Api::namespaced(self.client(cluster).await?, &cluster.namespace);
        let mut started = Vec::new();
        for &slot in &spec.slots {
            let pod = worker_pod(cluster, spec, slot, &self.settings)?;
            let name = pod.metadata.name.clone().unwrap_or_default();
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                // Created by an earlier try of this launch.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::info!(pod = %name, cluster = %cluster.name, "worker pod exists already");
                }
                Err(e) => return Err(classify(format!("create pod {name}"), e)),
            }
            tracing::info!(pod = %name, cluster = %cluster.name, team = %spec.team, pool = %spec.pool, "worker pod created");
            started.push(LaunchedWorker::for_slot(
                name,
                &cluster.name,
                spec,
                slot,
                WorkerPhase::Pending,
            ));
        }
        Ok(started)
    }

    async fn list(
        &self,
        cluster: &ClusterRecord,
        pool: Option<&str>,
    ) -> Result<Vec<LaunchedWorker>, BackendError> {
        let pods: Api<Pod> = Api::namespaced(self.client(cluster).await?, &cluster.namespace);
        let mut selector = format!("{}={MANAGED_BY}", labels::MANAGED_BY);
        if let Some(p) = pool {
            selector.push_str(&format!(",{}={}", labels::POOL, label_value(p)));
        }
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| classify(format!("list pods {selector}"), e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|p| worker_of(p, &cluster.name))
            .filter(|w| pool.is_none_or(|want| w.pool == want))
            .collect())
    }

    async fn terminate(&self, cluster: &ClusterRecord, worker: &str) -> Result<(), BackendError> {
        let pods: Api<Pod> = Api::namespaced(self.client(cluster).await?, &cluster.namespace);
        match pods.delete(worker, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(classify(format!("delete pod {worker}"), e)),
        }
    }

    async fn cordon(&self, cluster: &ClusterRecord, node: &str) -> Result<(), BackendError> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client(cluster).await?);
        let patch = serde_json::json!({"spec": {"unschedulable": true}});
        match nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node, cluster = %cluster.name, "node cordoned");
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(classify(format!("cordon node {node}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn label_values_are_sanitised_to_kubernetes_rules() {
        assert_eq!(
            label_value("default--2cpu-8192mib"),
            "default--2cpu-8192mib"
        );
        assert_eq!(label_value("a/b c"), "a_b_c");
        assert_eq!(label_value("-x-"), "x");
        assert_eq!(label_value(&"y".repeat(80)).len(), 63);
    }

    #[test]
    fn cpu_quantities_use_whole_cores_or_millicores() {
        assert_eq!(cpu_quantity(2000).0, "2");
        assert_eq!(cpu_quantity(500).0, "500m");
    }

    #[test]
    fn a_ca_bundle_decodes_to_its_der_certificates_and_garbage_is_named() {
        let der1 = vec![0x30, 0x82, 0x01, 0x0a];
        let der2 = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        let e = base64::engine::general_purpose::STANDARD;
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            e.encode(&der1),
            e.encode(&der2)
        );
        assert_eq!(pem_certificates(&e.encode(pem)).unwrap(), vec![der1, der2]);
        assert!(pem_certificates("%%%").unwrap_err().contains("not base64"));
        assert!(pem_certificates(&e.encode("hello"))
            .unwrap_err()
            .contains("no PEM certificate"));
    }

    #[test]
    fn an_eks_client_needs_an_https_endpoint_it_can_parse() {
        let mut c = ClusterRecord {
            name: "east".into(),
            endpoint: "not a url".into(),
            namespace: "batchplane".into(),
            ..Default::default()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _guard = rt.enter();
        assert!(matches!(
            eks_client(&c, "t"),
            Err(BackendError::Rejected { .. })
        ));
        c.endpoint = "https://ABC.gr7.us-east-1.eks.amazonaws.com".into();
        assert!(eks_client(&c, "k8s-aws-v1.abc").is_ok());
    }
}
