// What the construct refuses, and how: each error names the prop or parameter at fault.
// Run with `npm test` (node's own test runner; no AWS account, no build of the functions).
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { App, Duration, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { Batchplane, BatchplaneProps, propsFromParameters } from '../lib';

const prebuilt = fs.mkdtempSync(path.join(os.tmpdir(), 'batchplane-bootstraps-'));
for (const f of ['api', 'fanout', 'placement', 'autoscaler', 'publisher', 'trigger']) {
  fs.mkdirSync(path.join(prebuilt, f), { recursive: true });
  fs.writeFileSync(path.join(prebuilt, f, 'bootstrap'), '');
}

function synth(props: BatchplaneProps): Template {
  const stack = new Stack(new App(), 'Test', { env: { account: '123456789012', region: 'us-east-1' } });
  new Batchplane(stack, 'Batchplane', { prebuiltFunctionsDir: prebuilt, ...props });
  return Template.fromStack(stack);
}

test('a deployment name the template would refuse is refused, naming the prop', () => {
  assert.throws(() => synth({ deploymentName: 'Prod_1' }), /^Error: deploymentName: "Prod_1"/);
  assert.throws(() => synth({ deploymentName: 'a'.repeat(32) }), /deploymentName/);
});

test('leases under their minimum are refused', () => {
  assert.throws(() => synth({ lease: Duration.seconds(2) }), /^Error: lease: 2 seconds is under the minimum of 3/);
  assert.throws(() => synth({ reservationLease: Duration.seconds(29) }), /^Error: reservationLease: 29 seconds/);
});

test('an admin that is not an ARN or pattern is refused by its index', () => {
  assert.throws(() => synth({ admins: ['arn:aws:iam::123456789012:role/ok', 'bad admin'] }), /^Error: admins\[1\]: "bad admin"/);
});

test('an example bucket without the examples is refused', () => {
  assert.throws(() => synth({ exampleBucketName: 'b' }), /^Error: exampleBucketName: set deployExamples/);
});

test('a missing prebuilt bootstrap is named', () => {
  const stack = new Stack(new App(), 'Test');
  assert.throws(
    () => new Batchplane(stack, 'Batchplane', { prebuiltFunctionsDir: '/nonexistent' }),
    /prebuiltFunctionsDir: \/nonexistent\/api\/bootstrap does not exist/,
  );
});

test('parameters are checked by name, as CloudFormation checks the template\'s', () => {
  const from = (p: Record<string, string>) => () => propsFromParameters((n) => p[n]);
  assert.throws(from({ LeaseSeconds: '30s' }), /^Error: LeaseSeconds: "30s" is not a whole number/);
  assert.throws(from({ ManageNodes: 'yes' }), /^Error: ManageNodes: "yes" is not one of on, off/);
  assert.throws(from({ LogRetentionDays: '8' }), /^Error: LogRetentionDays: 8 is not a retention/);
  assert.throws(from({ AutoscalerSettings: '{zones' }), /^Error: AutoscalerSettings: not JSON/);
  const props = propsFromParameters((n) => ({ Admins: 'a,b', ManageNodes: 'off', LeaseSeconds: '45' } as Record<string, string>)[n]);
  assert.deepEqual(props.admins, ['a', 'b']);
  assert.equal(props.manageNodes, false);
  assert.equal(props.lease?.toSeconds(), 45);
});

test('the defaults deploy no examples, no alarm actions and no PassRole', () => {
  const t = synth({});
  t.resourceCountIs('AWS::StepFunctions::StateMachine', 0);
  t.resourceCountIs('AWS::Events::Rule', 0);
  t.resourceCountIs('AWS::Lambda::Function', 6);
  for (const alarm of Object.values(t.findResources('AWS::CloudWatch::Alarm'))) {
    assert.equal(alarm.Properties.AlarmActions, undefined);
  }
  assert.ok(!JSON.stringify(t.toJSON()).includes('iam:PassRole'));
  t.hasResourceProperties('AWS::Lambda::Function', {
    FunctionName: 'batchplane-autoscaler',
    ReservedConcurrentExecutions: 1,
    Architectures: ['arm64'],
    Environment: { Variables: { BATCHPLANE_NODES: 'on', BATCHPLANE_LEASE_SECONDS: '30' } },
  });
});

test('without prebuilt bootstraps each function is a cargo-lambda-cdk RustFunction for arm64', () => {
  // Bundling skipped (as `cdk synth` does for stacks it is not deploying): the wiring is
  // checked, not the build: the workspace manifest is found and read, and each function
  // names its binary.
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new Stack(app, 'Test', { env: { account: '123456789012', region: 'us-east-1' } });
  const b = new Batchplane(stack, 'Batchplane', {});
  const t = Template.fromStack(stack);
  t.resourceCountIs('AWS::Lambda::Function', 6);
  for (const [name, f] of Object.entries(b.functions)) {
    assert.equal(f.constructor.name, 'RustFunction', name);
  }
  t.allResourcesProperties('AWS::Lambda::Function', {
    Runtime: 'provided.al2023',
    Architectures: ['arm64'],
    Handler: 'bootstrap',
  });
});
