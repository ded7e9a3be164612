// The SAM template's parameters, by name, as the construct's props: one deployment can
// be described the same way to either tool.
import { Duration, aws_logs as logs } from 'aws-cdk-lib';
import type { BatchplaneProps } from './batchplane';

/**
 * Props from values named as `infra/template.yaml`'s parameters (DeploymentName,
 * LeaseSeconds, ..., AlarmTopicArn); a parameter not given keeps the prop's default.
 * A value the template would refuse is refused, naming the parameter.
 */
export function propsFromParameters(get: (name: string) => string | undefined): BatchplaneProps {
  const text = (name: string) => {
    const v = get(name);
    return v === undefined || v === '' ? undefined : v;
  };
  const seconds = (name: string) => {
    const v = text(name);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v)) throw new Error(`${name}: "${v}" is not a whole number of seconds`);
    return Duration.seconds(Number(v));
  };
  const json = (name: string) => {
    const v = text(name);
    if (v === undefined) return undefined;
    try {
      return JSON.parse(v);
    } catch (e) {
      throw new Error(`${name}: not JSON (${(e as Error).message})`);
    }
  };
  const choice = (name: string, allowed: string[]) => {
    const v = text(name);
    if (v !== undefined && !allowed.includes(v)) throw new Error(`${name}: "${v}" is not one of ${allowed.join(', ')}`);
    return v;
  };
  const retention = text('LogRetentionDays');
  const days = Object.values(logs.RetentionDays).filter((d) => typeof d === 'number') as number[];
  if (retention !== undefined && !days.includes(Number(retention))) {
    throw new Error(`LogRetentionDays: ${retention} is not a retention CloudWatch Logs offers (${days.join(', ')})`);
  }
  const manageNodes = choice('ManageNodes', ['on', 'off']);
  const examples = choice('DeployExamples', ['true', 'false']);
  return {
    deploymentName: text('DeploymentName'),
    lease: seconds('LeaseSeconds'),
    reservationLease: seconds('ReservationLeaseSeconds'),
    taskhostImage: text('TaskhostImage'),
    jobRoleServiceAccounts: json('JobRoleServiceAccounts'),
    manageNodes: manageNodes === undefined ? undefined : manageNodes === 'on',
    nodeRoleArn: text('NodeRoleArn'),
    autoscalerSettings: json('AutoscalerSettings'),
    admins: text('Admins')?.split(',').filter((a) => a !== ''),
    logRetention: retention === undefined ? undefined : (Number(retention) as logs.RetentionDays),
    alarmTopicArn: text('AlarmTopicArn'),
    deployExamples: examples === 'true',
    exampleBucketName: text('ExampleBucketName'),
  };
}
