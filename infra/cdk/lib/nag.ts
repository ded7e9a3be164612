// What cdk-nag's AwsSolutions rules report of the construct, and why each stands. Each
// suppression covers the whole construct: the reasons hold for every resource they apply to.
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';

/** What cdk-nag's AwsSolutions rules report and why each stands. */
export function suppressNagFindings(scope: Construct) {
  NagSuppressions.addResourceSuppressions(scope, [
    {
      id: 'AwsSolutions-IAM4',
      reason: 'The functions use the AWS managed basic execution, X-Ray write and DynamoDB stream read policies, as the SAM template does; each names only logs, traces and the stream.',
    },
    {
      id: 'AwsSolutions-IAM5',
      reason: 'Wildcards are the deployment\'s own: its queues (<name>-*, created on first use per job queue and pool), its table\'s indexes, any EKS cluster in the account (registered at run time), launch templates and subnets named in stored settings, EC2 Describe calls (unscoped by AWS), task tokens (no resource), and log delivery for the example state machine.',
    },
    {
      id: 'AwsSolutions-SQS3',
      reason: 'These are the dead-letter queues themselves; each has an alarm on its depth.',
    },
    {
      id: 'AwsSolutions-SQS4',
      reason: 'No queue has a resource policy granting anyone outside the account; the deployment\'s roles reach them with signed HTTPS requests from the AWS SDK.',
    },
    {
      id: 'AwsSolutions-SF1',
      reason: 'The example state machine logs errors only, without execution data: its input holds job specs that are not for the logs.',
    },
    {
      id: 'AwsSolutions-SF2',
      reason: 'The example state machine is one task waiting on a callback; Batchplane\'s functions are traced with X-Ray.',
    },
  ], true);
}
