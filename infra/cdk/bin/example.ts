#!/usr/bin/env node
// An app that deploys Batchplane as a stack of its own, checked by cdk-nag's
// AwsSolutions rules. It takes the SAM template's parameters as context, by the same
// names (`cdk deploy -c DeploymentName=prod -c Admins=arn:...`), or all of them from a
// JSON file (`-c parametersFile=test/everything-parameters.json`, what scripts/cdk-check.sh
// gives both). BATCHPLANE_LAMBDA_DIR names prebuilt bootstraps (`make lambda` leaves them
// in $CARGO_TARGET_DIR/lambda) instead of building the functions at synth.
import * as fs from 'node:fs';
import { App, Aspects, CfnOutput, Stack } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { Batchplane, propsFromParameters } from '../lib';

const app = new App();
const file = app.node.tryGetContext('parametersFile') as string | undefined;
const fromFile: Record<string, string> = file ? JSON.parse(fs.readFileSync(file, 'utf8')) : {};
const parameter = (name: string): string | undefined => app.node.tryGetContext(name) ?? fromFile[name];

const stack = new Stack(app, parameter('stackName') ?? 'Batchplane', {
  // A fixed environment: synth needs no AWS account (deploy with `-c account=... -c region=...`).
  env: { account: parameter('account') ?? '123456789012', region: parameter('region') ?? 'us-east-1' },
  description: 'Batchplane: a serverless control plane for batch work (CDK)',
  analyticsReporting: false,
});
const batchplane = new Batchplane(stack, 'Batchplane', {
  ...propsFromParameters(parameter),
  prebuiltFunctionsDir: process.env.BATCHPLANE_LAMBDA_DIR || undefined,
});

const out = (id: string, value: string | undefined, description?: string) => {
  if (value !== undefined) new CfnOutput(stack, id, { value, description });
};
out('ApiUrl', batchplane.apiUrl, 'Point the CLI here (BATCHPLANE_API_URL); requests are signed with SigV4');
out('EventBusName', batchplane.eventBusName, 'Job and task state changes are published here');
out('TableName', batchplane.tableName);
out('RunJobStateMachineArn', batchplane.runJobStateMachineArn, 'The example state machine that runs a Batchplane job as a step');
out('RunJobStateMachineRoleArn', batchplane.runJobStateMachineRoleArn, 'The role the example state machine submits as; grant it member on the team its jobs run for');
out('QueuePrefix', batchplane.queuePrefix, 'Task queues are named <prefix><queue>');
out('TriggerFunctionArn', batchplane.triggerFunctionArn, 'Target this from EventBridge rules with the input {"template": NAME, "event": <aws.events.event.json>}');
out('DefaultQueueUrl', batchplane.defaultQueueUrl);
out('TaskDeadLetterQueueUrl', batchplane.taskDeadLetterQueueUrl);
out('StreamDeadLetterQueueUrl', batchplane.streamDeadLetterQueueUrl);

Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));

