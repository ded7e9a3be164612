// The template's parameter constraints, applied to the construct's props.
import { Duration, Token } from 'aws-cdk-lib';
import type { BatchplaneProps } from './batchplane';

const DEPLOYMENT_NAME = /^[a-z][a-z0-9-]{0,30}$/;
const ADMIN = /^[A-Za-z0-9+=,.@_:/*-]+$/;

/** Refuse props the template's parameter constraints would refuse, naming the prop. */
export function validate(props: BatchplaneProps) {
  const name = props.deploymentName;
  if (name !== undefined && !Token.isUnresolved(name) && !DEPLOYMENT_NAME.test(name)) {
    throw new Error(`deploymentName: "${name}" must be a lower-case letter then up to 30 lower-case letters, digits or dashes`);
  }
  const atLeast = (prop: string, d: Duration | undefined, min: number) => {
    if (d !== undefined && !Token.isUnresolved(d.toSeconds()) && d.toSeconds() < min) {
      throw new Error(`${prop}: ${d.toSeconds()} seconds is under the minimum of ${min}`);
    }
  };
  atLeast('lease', props.lease, 3);
  atLeast('reservationLease', props.reservationLease, 30);
  (props.admins ?? []).forEach((a, i) => {
    if (!Token.isUnresolved(a) && !ADMIN.test(a)) {
      throw new Error(`admins[${i}]: "${a}" is not an IAM ARN or pattern (letters, digits and +=,.@_:/*- only)`);
    }
  });
  if (props.exampleBucketName && !props.deployExamples) {
    throw new Error('exampleBucketName: set deployExamples too (the bucket rule is one of the examples)');
  }
  if (props.prebuiltFunctionsDir && props.manifestPath) {
    throw new Error('prebuiltFunctionsDir and manifestPath: give one (prebuilt bootstraps are not built again)');
  }
}
