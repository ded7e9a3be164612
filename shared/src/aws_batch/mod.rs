//! AWS Batch's operations over Batchplane's one model: job definitions, job queues,
//! compute environments and scheduling policies are registry documents in AWS's own
//! shape; jobs are array jobs (a single job is an array of one) with dependency rules.
//! Inputs and outputs are AWS Batch's JSON; errors are `ClientException` (400) and
//! `ServerException` (500), named by [`crate::api::ApiError::code`].
//!
//! | file | operations |
//! |---|---|
//! | `definitions` | RegisterJobDefinition, DescribeJobDefinitions, DeregisterJobDefinition |
//! | `queues` | CreateJobQueue, DescribeJobQueues, UpdateJobQueue, DeleteJobQueue |
//! | `environments` | Create/Describe/Update/DeleteComputeEnvironment |
//! | `policies` | Create/Describe/List/Update/DeleteSchedulingPolicy |
//! | `tags` | TagResource, UntagResource, ListTagsForResource |
//! | `submit` | SubmitJob (and the native array path), CancelJob, TerminateJob |
//! | `describe` | DescribeJobs, ListJobs |
//! | `filters` | ListJobs' filters |
//! | `wire`, `arn` | what they share: errors naming fields, paging, names and ARNs |

mod arn;
mod definitions;
mod describe;
mod environments;
mod filters;
mod policies;
mod queues;
mod submit;
mod tags;
mod wire;

pub use arn::{arn, ArnContext};
pub use definitions::{definition_tiers, TIERS_TAG};
pub use describe::aws_status;
pub use submit::{child_shard, ArraySubmission, TemplateInput};
pub use wire::CLIENT;
