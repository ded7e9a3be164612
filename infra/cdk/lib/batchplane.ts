// The Batchplane construct: the same resources, policies, event sources, schedules,
// alarms and queues as infra/template.yaml. scripts/cdk-check.sh compares the two
// (SAM's template transformed to plain CloudFormation against `cdk synth`) and names
// what differs, so a change to one that is not made to the other fails CI.

import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  Aws,
  Duration,
  Fn,
  RemovalPolicy,
  aws_apigatewayv2 as apigw,
  aws_cloudwatch as cloudwatch,
  aws_dynamodb as dynamodb,
  aws_events as events,
  aws_iam as iam,
  aws_lambda as lambda,
  aws_lambda_destinations as destinations,
  aws_lambda_event_sources as sources,
  aws_logs as logs,
  aws_scheduler as scheduler,
  aws_sqs as sqs,
  aws_stepfunctions as sfn,
} from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { codeFor } from './functions';
import { suppressNagFindings } from './nag';
import { validate } from './validate';

/** What `infra/template.yaml` takes as parameters, typed. */
export interface BatchplaneProps {
  /**
   * Names the table, the queue prefix and the event bus; two deployments in one account
   * need two names. Lower case letters, digits and dashes, starting with a letter, at
   * most 31 characters.
   * @default 'batchplane'
   */
  readonly deploymentName?: string;
  /**
   * How long a claim holds a task without a heartbeat (also the task queues' visibility
   * timeout). At least 3 seconds.
   * @default Duration.seconds(30)
   */
  readonly lease?: Duration;
  /**
   * How long a worker's placement holds its team's quota without the worker renewing
   * it. At least 30 seconds.
   * @default Duration.minutes(5)
   */
  readonly reservationLease?: Duration;
  /**
   * The taskhost image (a static taskhost at /taskhost). Pools of tasks that name no
   * image run it; the others run their tasks' image with the taskhost copied in by an
   * init container.
   * @default 'public.ecr.aws/batchplane/taskhost:latest'
   */
  readonly taskhostImage?: string;
  /**
   * Each job role ARN tasks may name (jobRoleArn) mapped to the Kubernetes service
   * account, annotated with that role, whose pods run them. A pool whose role has none
   * starts no workers.
   * @default {}
   */
  readonly jobRoleServiceAccounts?: Record<string, string>;
  /**
   * Whether the autoscaler launches and retires EC2 nodes (false when the clusters'
   * nodes are managed elsewhere).
   * @default true
   */
  readonly manageNodes?: boolean;
  /**
   * The IAM role of the nodes' instance profile (named in the launch templates); the
   * autoscaler may pass only this role.
   * @default none: the autoscaler may pass no role
   */
  readonly nodeRoleArn?: string;
  /**
   * The autoscaler's settings until some are stored with PUT /v1/autoscaler/settings:
   * zones, launch templates per cluster, instance types, limits and half-lives (see the
   * README).
   * @default {}
   */
  readonly autoscalerSettings?: Record<string, unknown>;
  /**
   * The deployment's admins: IAM ARNs or patterns with `*`. Admins manage teams and
   * quotas, clusters, autoscaler settings, templates and access; everyone else needs a
   * grant.
   * @default none
   */
  readonly admins?: string[];
  /** @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /**
   * An SNS topic to notify when an alarm fires.
   * @default none
   */
  readonly alarmTopicArn?: string;
  /**
   * Also deploy the example state machine that runs a Batchplane job as a step, and the
   * nightly rule that submits the `nightly-report` template.
   * @default false
   */
  readonly deployExamples?: boolean;
  /**
   * With deployExamples, a bucket (with EventBridge notifications on) whose new objects
   * trigger the `ingest` job template.
   * @default none
   */
  readonly exampleBucketName?: string;
  /**
   * A directory holding each function's bootstrap built already
   * (`<dir>/<function>/bootstrap`, as `cargo lambda build --lambda-dir <dir>` and `make
   * lambda` leave them). Without it each function is built for arm64 with cargo-lambda-cdk
   * at synth.
   * @default built at synth
   */
  readonly prebuiltFunctionsDir?: string;
  /**
   * The workspace's Cargo.toml, for building the functions at synth.
   * @default the Batchplane repository's own, two levels above this package
   */
  readonly manifestPath?: string;
}

/** The functions, by the binary each runs. */
export type FunctionName = 'api' | 'fanout' | 'placement' | 'autoscaler' | 'publisher' | 'trigger';

/** One function as the template declares it. */
interface FunctionSpec {
  readonly description: string;
  readonly memoryMiB?: number;
  readonly timeoutSeconds?: number;
  readonly reservedConcurrency?: number;
  readonly readsStream?: boolean;
  readonly environment?: Record<string, string>;
}

export class Batchplane extends Construct {
  /** The HTTPS endpoint the CLI and AWS Batch clients sign their requests to. */
  public readonly apiUrl: string;
  public readonly eventBusName: string;
  public readonly tableName: string;
  /** Task queues are named `<queuePrefix><queue>`. */
  public readonly queuePrefix: string;
  public readonly triggerFunctionArn: string;
  public readonly defaultQueueUrl: string;
  public readonly taskDeadLetterQueueUrl: string;
  public readonly streamDeadLetterQueueUrl: string;
  /** With deployExamples: the state machine that runs a job as a step. */
  public readonly runJobStateMachineArn?: string;
  /** With deployExamples: the role it submits as (grant it member on its team). */
  public readonly runJobStateMachineRoleArn?: string;

  public readonly table: dynamodb.Table;
  public readonly eventBus: events.EventBus;
  public readonly functions: Record<FunctionName, lambda.Function>;

  private readonly name: string;
  private readonly retention: logs.RetentionDays;

  constructor(scope: Construct, id: string, props: BatchplaneProps = {}) {
    super(scope, id);
    validate(props);
    const name = props.deploymentName ?? 'batchplane';
    this.name = name;
    this.retention = props.logRetention ?? logs.RetentionDays.ONE_MONTH;
    const lease = props.lease ?? Duration.seconds(30);
    const reservationLease = props.reservationLease ?? Duration.minutes(5);
    const alarmActions = props.alarmTopicArn ? [props.alarmTopicArn] : undefined;

    // ---- storage ----
    this.table = new dynamodb.Table(this, 'Table', {
      tableName: name,
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      stream: dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
      timeToLiveAttribute: 'expires_at',
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const S = dynamodb.AttributeType.STRING;
    const N = dynamodb.AttributeType.NUMBER;
    const listed = ['team', 'jd', 'share'];
    this.table.addGlobalSecondaryIndex({
      indexName: 'by_queue',
      partitionKey: { name: 'jq', type: S },
      sortKey: { name: 'created_at', type: N },
    });
    this.table.addGlobalSecondaryIndex({
      indexName: 'failures',
      partitionKey: { name: 'failed_in', type: S },
      sortKey: { name: 'sk', type: S },
    });
    // ListJobs' other questions, one sparse index each (shared/domain/src/listing.rs).
    for (const [indexName, pk, sk, skType] of [
      ['by_status', 'ls', 'created_at', N],
      ['by_name', 'jq', 'nk', S],
      ['by_definition', 'jq', 'dk', S],
      ['by_share', 'sq', 'created_at', N],
    ] as const) {
      this.table.addGlobalSecondaryIndex({
        indexName,
        partitionKey: { name: pk, type: S },
        sortKey: { name: sk, type: skType },
        projectionType: dynamodb.ProjectionType.INCLUDE,
        nonKeyAttributes: listed,
      });
    }
    // A team's jobs, newest first: the native listing and the console.
    this.table.addGlobalSecondaryIndex({
      indexName: 'by_team',
      partitionKey: { name: 'jt', type: S },
      sortKey: { name: 'created_at', type: N },
      projectionType: dynamodb.ProjectionType.INCLUDE,
      nonKeyAttributes: ['jq', 'state', 'nk'],
    });

    // ---- queues ----
    const queue = (id: string, suffix: string, extra: Partial<sqs.QueueProps> = {}) =>
      new sqs.Queue(this, id, {
        queueName: `${name}-${suffix}`,
        retentionPeriod: Duration.days(14),
        encryption: sqs.QueueEncryption.SQS_MANAGED,
        ...extra,
      });
    const taskDeadLetters = queue('TaskDeadLetterQueue', 'tasks-dlq');
    const streamDeadLetters = queue('StreamDeadLetterQueue', 'stream-dlq');
    const triggerDeadLetters = queue('TriggerDeadLetterQueue', 'trigger-dlq');
    // The default job queue; the API creates other job queues' and worker pools' queues
    // (`<name>-<queue>`) on first use, with the same dead-letter queue.
    const defaultQueue = queue('DefaultQueue', 'default', {
      visibilityTimeout: lease,
      // Workers give messages back while they are full; only a message that keeps
      // coming back unclaimable is dead.
      deadLetterQueue: { queue: taskDeadLetters, maxReceiveCount: 100 },
    });

    // ---- events ----
    this.eventBus = new events.EventBus(this, 'EventBus', { eventBusName: name });

    // ---- functions ----
    const environment: Record<string, string> = {
      BATCHPLANE_TABLE: this.table.tableName,
      BATCHPLANE_QUEUE_PREFIX: `${name}-`,
      BATCHPLANE_LEASE_SECONDS: String(lease.toSeconds()),
      BATCHPLANE_RESERVATION_LEASE_SECONDS: String(reservationLease.toSeconds()),
      BATCHPLANE_DEAD_LETTER_QUEUE_ARN: taskDeadLetters.queueArn,
      BATCHPLANE_EVENT_BUS: this.eventBus.eventBusName,
      BATCHPLANE_ACCOUNT_ID: Aws.ACCOUNT_ID,
      BATCHPLANE_PARTITION: Aws.PARTITION,
      BATCHPLANE_ADMINS: (props.admins ?? []).join(','),
      // The api refuses a job role with no service account; the autoscaler runs pods as it.
      BATCHPLANE_JOB_ROLE_SERVICE_ACCOUNTS: JSON.stringify(props.jobRoleServiceAccounts ?? {}),
      BATCHPLANE_IDENTITY: 'iam',
      RUST_LOG: 'info',
    };
    const code = codeFor(props);
    const make = (fn: FunctionName, id: string, spec: FunctionSpec, statements: iam.PolicyStatement[]) => {
      const managed = ['service-role/AWSLambdaBasicExecutionRole', 'AWSXrayWriteOnlyAccess'];
      if (spec.readsStream) managed.push('service-role/AWSLambdaDynamoDBExecutionRole');
      const role = new iam.Role(this, `${id}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        managedPolicies: managed.map((m) => iam.ManagedPolicy.fromAwsManagedPolicyName(m)),
        inlinePolicies: {
          [`${id}Policy`]: new iam.PolicyDocument({
            // A stream consumer sends the batches it gives up on to the stream's DLQ.
            statements: spec.readsStream
              ? [...statements, new iam.PolicyStatement({ actions: ['sqs:SendMessage'], resources: [streamDeadLetters.queueArn] })]
              : statements,
          }),
        },
      });
      const logGroup = this.logGroup(`${id}LogGroup`, `/aws/lambda/${name}-${fn}`);
      const f = code(this, id, fn, {
        functionName: `${name}-${fn}`,
        description: spec.description,
        memorySize: spec.memoryMiB ?? 256,
        timeout: Duration.seconds(spec.timeoutSeconds ?? 30),
        reservedConcurrentExecutions: spec.reservedConcurrency,
        tracing: lambda.Tracing.ACTIVE,
        // Every grant is in the role's own policy above, as the template states it:
        // nothing the constructs below would add is missing from it.
        role: role.withoutPolicyUpdates(),
        logGroup,
        environment: { ...environment, ...spec.environment },
      });
      return f;
    };

    const tableAndIndexes = [this.table.tableArn, `${this.table.tableArn}/index/*`];
    const ownQueues = `arn:${Aws.PARTITION}:sqs:${Aws.REGION}:${Aws.ACCOUNT_ID}:${name}-*`;
    const anyCluster = `arn:${Aws.PARTITION}:eks:*:${Aws.ACCOUNT_ID}:cluster/*`;
    const allow = (actions: string[], resources: string[], conditions?: Record<string, unknown>) =>
      new iam.PolicyStatement({ actions, resources, conditions });
    const ddb = (...actions: string[]) => actions.map((a) => `dynamodb:${a}`);

    const api = make('api', 'ApiFunction', {
      description: 'The HTTP API (jobs, AWS Batch operations, teams, clusters, autoscaler settings)',
    }, [
      allow(ddb('GetItem', 'PutItem', 'UpdateItem', 'DeleteItem', 'Query', 'BatchGetItem', 'BatchWriteItem', 'ConditionCheckItem'), tableAndIndexes),
      allow(['sqs:SendMessage', 'sqs:GetQueueUrl', 'sqs:GetQueueAttributes', 'sqs:CreateQueue', 'sqs:ListQueues', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility'], [ownQueues]),
      // A cluster registration is checked against the endpoint EKS reports.
      allow(['eks:DescribeCluster'], [anyCluster]),
      // Tasks' output, read back for callers who may view the task's job.
      allow(['logs:GetLogEvents'], [`arn:${Aws.PARTITION}:logs:${Aws.REGION}:${Aws.ACCOUNT_ID}:log-group:*:log-stream:*`]),
    ]);

    const fanout = make('fanout', 'FanoutFunction', {
      description: "Releases ready tasks from the table's stream to their queues; closes finished jobs",
      memoryMiB: 512,
      timeoutSeconds: 60,
      readsStream: true,
    }, [
      allow(ddb('GetItem', 'PutItem', 'UpdateItem', 'DeleteItem', 'Query', 'BatchGetItem', 'BatchWriteItem', 'ConditionCheckItem'), tableAndIndexes),
      allow(['sqs:SendMessage', 'sqs:GetQueueUrl', 'sqs:GetQueueAttributes', 'sqs:CreateQueue'], [ownQueues]),
    ]);
    this.consumeStream(fanout, streamDeadLetters, {
      batchSize: 500,
      // Release latency matters more than invocations: no batching window.
      maxBatchingWindow: Duration.seconds(0),
      parallelizationFactor: 4,
      // Task counts are kept per batch, keyed by its first record: a bisected retry would
      // present counted records under a new first record.
      bisectBatchOnError: false,
    });

    const placement = make('placement', 'PlacementFunction', {
      description: 'Grants workers within team quotas across clusters; sweeps lapsed reservations every minute',
    }, [
      allow(ddb('GetItem', 'PutItem', 'UpdateItem', 'DeleteItem', 'Query', 'ConditionCheckItem'), [this.table.tableArn]),
    ]);
    this.schedule('PlacementFunctionSweep', placement, `${name}-placement-sweep`);

    const ec2Arn = (resource: string, account: string = Aws.ACCOUNT_ID) =>
      `arn:${Aws.PARTITION}:ec2:${Aws.REGION}:${account}:${resource}`;
    const autoscaler = make('autoscaler', 'AutoscalerFunction', {
      description: 'Every minute, sizes each worker pool (reuse targeting), places taskhost pods, launches and retires EC2 nodes',
      timeoutSeconds: 120,
      // One tick at a time: the tick lease guards it too, this saves the invocations.
      reservedConcurrency: 1,
      environment: {
        BATCHPLANE_NODES: props.manageNodes === false ? 'off' : 'on',
        BATCHPLANE_TASKHOST_IMAGE: props.taskhostImage ?? 'public.ecr.aws/batchplane/taskhost:latest',
        BATCHPLANE_AUTOSCALER_SETTINGS: JSON.stringify(props.autoscalerSettings ?? {}),
      },
    }, [
      allow(ddb('GetItem', 'PutItem', 'UpdateItem', 'DeleteItem', 'Query', 'BatchGetItem', 'ConditionCheckItem'), [this.table.tableArn]),
      allow(['sqs:ListQueues'], ['*']),
      allow(['sqs:GetQueueUrl', 'sqs:GetQueueAttributes'], [ownQueues]),
      // The reconciler: abandoned submissions (by_queue), stranded jobs (by_status),
      // dead letters read and re-sent to their pools.
      allow(ddb('Query'), [`${this.table.tableArn}/index/*`]),
      allow(['sqs:ReceiveMessage', 'sqs:DeleteMessage'], [taskDeadLetters.queueArn]),
      allow(['sqs:SendMessage'], [ownQueues]),
      // A cluster token goes only to the endpoint EKS reports.
      allow(['eks:DescribeCluster'], [anyCluster]),
      // Describe calls cannot be scoped to resources.
      allow(['ec2:DescribeInstances', 'ec2:DescribeSpotPriceHistory', 'ec2:DescribeLaunchTemplates', 'ec2:DescribeLaunchTemplateVersions'], ['*']),
      allow(['ec2:CreateFleet', 'ec2:RunInstances', 'ec2:CreateTags'], ['*'], {
        StringEquals: { 'aws:RequestTag/batchplane:managed': name },
      }),
      allow(['ec2:CreateFleet', 'ec2:RunInstances'], [
        ec2Arn('launch-template/*'),
        ec2Arn('fleet/*'),
        ec2Arn('subnet/*'),
        ec2Arn('security-group/*'),
        ec2Arn('network-interface/*'),
        ec2Arn('volume/*'),
        ec2Arn('image/*', ''),
      ]),
      // Only its own nodes can be terminated.
      allow(['ec2:TerminateInstances'], [ec2Arn('instance/*')], {
        StringEquals: { 'aws:ResourceTag/batchplane:managed': name },
      }),
      ...(props.nodeRoleArn
        ? [allow(['iam:PassRole'], [props.nodeRoleArn], { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } })]
        : []),
    ]);
    this.schedule('AutoscalerFunctionTick', autoscaler, `${name}-autoscaler-tick`);

    const publisher = make('publisher', 'PublisherFunction', {
      description: 'Publishes job (and opted-in task) state changes from the table\'s stream to the event bus; Step Functions callbacks and heartbeats',
      timeoutSeconds: 60,
      readsStream: true,
    }, [
      allow(ddb('GetItem', 'PutItem', 'UpdateItem', 'DeleteItem', 'Query'), [this.table.tableArn]),
      allow(['events:PutEvents'], [this.eventBus.eventBusArn]),
      // Task tokens name no resource.
      allow(['states:SendTaskSuccess', 'states:SendTaskFailure', 'states:SendTaskHeartbeat'], ['*']),
    ]);
    // The stream's second consumer: an EventBridge or Step Functions outage never holds
    // up task release.
    this.consumeStream(publisher, streamDeadLetters, {
      batchSize: 100,
      maxBatchingWindow: Duration.seconds(1),
      bisectBatchOnError: true,
    });
    this.schedule('PublisherFunctionHeartbeats', publisher, `${name}-publisher-heartbeat`);

    const trigger = make('trigger', 'TriggerFunction', {
      description: 'EventBridge rules and schedules submit jobs from stored templates, once per event',
    }, [
      allow(ddb('GetItem', 'PutItem', 'UpdateItem', 'Query', 'BatchWriteItem', 'ConditionCheckItem'), tableAndIndexes),
      allow(['sqs:SendMessage', 'sqs:GetQueueUrl', 'sqs:GetQueueAttributes', 'sqs:CreateQueue'], [ownQueues]),
      allow(['sqs:SendMessage'], [triggerDeadLetters.queueArn]),
    ]);
    trigger.configureAsyncInvoke({
      retryAttempts: 2,
      maxEventAge: Duration.hours(1),
      onFailure: new destinations.SqsDestination(triggerDeadLetters),
    });
    this.functions = { api, fanout, placement, autoscaler, publisher, trigger };

    // ---- HTTP API (SigV4) ----
    const httpApi = this.httpApi(api);

    // ---- examples ----
    const triggerRule = (id: string, description: string, template: string, rule: Partial<events.CfnRuleProps>, retry?: events.CfnRule.RetryPolicyProperty) => {
      const r = new events.CfnRule(this, id, {
        description,
        ...rule,
        targets: [{
          id: 'trigger',
          arn: trigger.functionArn,
          inputTransformer: { inputTemplate: `{"template": "${template}", "event": <aws.events.event.json>}` },
          retryPolicy: retry,
          deadLetterConfig: { arn: triggerDeadLetters.queueArn },
        }],
      });
      new lambda.CfnPermission(this, `${id}Permission`, {
        functionName: trigger.functionName,
        action: 'lambda:InvokeFunction',
        principal: 'events.amazonaws.com',
        sourceArn: r.attrArn,
      });
    };
    if (props.deployExamples && props.exampleBucketName) {
      // New objects in a bucket submit the `ingest` template's job.
      triggerRule('IngestOnObjectCreatedRule', 'New objects in the example bucket submit the ingest job template', 'ingest', {
        eventPattern: {
          'source': ['aws.s3'],
          'detail-type': ['Object Created'],
          'detail': { bucket: { name: [props.exampleBucketName] } },
        },
      }, { maximumRetryAttempts: 10, maximumEventAgeInSeconds: 3600 });
    }
    if (props.deployExamples) {
      // Every night at 02:00 UTC, the `nightly-report` template's job.
      triggerRule('NightlyReportRule', 'Submits the nightly-report job template every night', 'nightly-report', {
        scheduleExpression: 'cron(0 2 * * ? *)',
      });
    }
    new sqs.CfnQueuePolicy(this, 'TriggerDeadLetterPolicy', {
      queues: [triggerDeadLetters.queueUrl],
      policyDocument: {
        Statement: [{
          Effect: 'Allow',
          Principal: { Service: 'events.amazonaws.com' },
          Action: 'sqs:SendMessage',
          Resource: triggerDeadLetters.queueArn,
          Condition: { StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID } },
        }],
      },
    });
    if (props.deployExamples) {
      const machine = this.runJobStateMachine(httpApi);
      this.runJobStateMachineArn = machine.stateMachineArn;
      this.runJobStateMachineRoleArn = machine.roleArn;
    }

    // ---- alarms ----
    const alarm = (id: string, description: string, namespace: string, metricName: string, dimension: cloudwatch.CfnAlarm.DimensionProperty, statistic: string, evaluationPeriods = 1) =>
      new cloudwatch.CfnAlarm(this, id, {
        alarmDescription: description,
        namespace,
        metricName,
        dimensions: [dimension],
        statistic,
        period: 300,
        evaluationPeriods,
        threshold: 0,
        comparisonOperator: 'GreaterThanThreshold',
        treatMissingData: 'notBreaching',
        alarmActions,
      });
    const queueDepth = (q: sqs.Queue) => ({ name: 'QueueName', value: q.queueName });
    const functionOf = (f: lambda.Function) => ({ name: 'FunctionName', value: f.functionName });
    alarm('TaskDeadLetterAlarm', 'Task messages reached the dead-letter queue (unclaimable after 100 receives)', 'AWS/SQS', 'ApproximateNumberOfMessagesVisible', queueDepth(taskDeadLetters), 'Maximum');
    alarm('StreamDeadLetterAlarm', 'Stream batches the fanout gave up on (their records\' effects were not applied)', 'AWS/SQS', 'ApproximateNumberOfMessagesVisible', queueDepth(streamDeadLetters), 'Maximum');
    alarm('ApiErrorsAlarm', 'The api function failed invocations', 'AWS/Lambda', 'Errors', functionOf(api), 'Sum');
    alarm('FanoutErrorsAlarm', 'The fanout function failed invocations (stream batches are retried)', 'AWS/Lambda', 'Errors', functionOf(fanout), 'Sum');
    alarm('PlacementErrorsAlarm', 'The placement function failed invocations', 'AWS/Lambda', 'Errors', functionOf(placement), 'Sum');
    alarm('PublisherErrorsAlarm', 'The publisher function failed invocations (stream batches are retried)', 'AWS/Lambda', 'Errors', functionOf(publisher), 'Sum');
    alarm('TriggerDeadLetterAlarm', 'Triggering events that could not submit their job after retries', 'AWS/SQS', 'ApproximateNumberOfMessagesVisible', queueDepth(triggerDeadLetters), 'Maximum');
    alarm('AutoscalerErrorsAlarm', 'The autoscaler function failed invocations', 'AWS/Lambda', 'Errors', functionOf(autoscaler), 'Sum', 2);

    // ---- attributes (the template's outputs) ----
    this.apiUrl = `https://${httpApi.ref}.execute-api.${Aws.REGION}.${Aws.URL_SUFFIX}`;
    this.eventBusName = this.eventBus.eventBusName;
    this.tableName = this.table.tableName;
    this.queuePrefix = `${name}-`;
    this.triggerFunctionArn = trigger.functionArn;
    this.defaultQueueUrl = defaultQueue.queueUrl;
    this.taskDeadLetterQueueUrl = taskDeadLetters.queueUrl;
    this.streamDeadLetterQueueUrl = streamDeadLetters.queueUrl;

    suppressNagFindings(this);
  }

  /** Invoke `fn` with the table's stream: its item failures retried from the failed record, 100 times, then to the stream's DLQ. */
  private consumeStream(fn: lambda.Function, deadLetters: sqs.Queue, batching: Pick<lambda.EventSourceMappingOptions, 'batchSize' | 'maxBatchingWindow' | 'parallelizationFactor' | 'bisectBatchOnError'>) {
    fn.addEventSourceMapping('Stream', {
      eventSourceArn: this.table.tableStreamArn!,
      startingPosition: lambda.StartingPosition.TRIM_HORIZON,
      reportBatchItemFailures: true,
      retryAttempts: 100,
      onFailure: new sources.SqsDlq(deadLetters),
      ...batching,
    });
  }

  private logGroup(id: string, logGroupName: string): logs.LogGroup {
    return new logs.LogGroup(this, id, {
      logGroupName,
      retention: this.retention,
      removalPolicy: RemovalPolicy.DESTROY,
    });
  }

  /** Invoke `target` every minute (EventBridge Scheduler, with a role that may only do that). */
  private schedule(id: string, target: lambda.Function, scheduleName: string) {
    const role = new iam.Role(this, `${id}Role`, {
      assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com'),
      inlinePolicies: {
        [`${id}LambdaPolicy`]: new iam.PolicyDocument({
          statements: [new iam.PolicyStatement({ actions: ['lambda:InvokeFunction'], resources: [target.functionArn] })],
        }),
      },
    });
    new scheduler.CfnSchedule(this, id, {
      name: scheduleName,
      scheduleExpression: 'rate(1 minute)',
      flexibleTimeWindow: { mode: 'OFF' },
      target: { arn: target.functionArn, roleArn: role.roleArn },
    });
  }

  /** The HTTP API: every path to the api function, each request signed (SigV4). */
  private httpApi(api: lambda.Function): apigw.CfnApi {
    const integration = Fn.sub('arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${Arn}/invocations', {
      Arn: api.functionArn,
    });
    const httpApi = new apigw.CfnApi(this, 'HttpApi', {
      body: {
        openapi: '3.0.1',
        info: { version: '1.0', title: Aws.STACK_NAME },
        paths: {
          '/{proxy+}': {
            'x-amazon-apigateway-any-method': {
              'x-amazon-apigateway-integration': {
                httpMethod: 'POST',
                type: 'aws_proxy',
                uri: integration,
                payloadFormatVersion: '2.0',
              },
              'security': [{ AWS_IAM: [] }],
              'parameters': [{ required: true, name: 'proxy+', in: 'path' }],
              'responses': {},
            },
          },
        },
        components: {
          securitySchemes: {
            AWS_IAM: { 'type': 'apiKey', 'name': 'Authorization', 'in': 'header', 'x-amazon-apigateway-authtype': 'awsSigv4' },
          },
        },
      },
    });
    const accessLogs = this.logGroup('HttpApiLogGroup', `/aws/apigateway/${this.name}-http-api`);
    new apigw.CfnStage(this, 'HttpApiDefaultStage', {
      apiId: httpApi.ref,
      stageName: '$default',
      autoDeploy: true,
      accessLogSettings: {
        destinationArn: accessLogs.logGroupArn,
        format: JSON.stringify({
          requestId: '$context.requestId',
          ip: '$context.identity.sourceIp',
          caller: '$context.identity.caller',
          method: '$context.httpMethod',
          path: '$context.path',
          status: '$context.status',
          latency: '$context.responseLatency',
        }),
      },
    });
    new lambda.CfnPermission(this, 'ApiFunctionAnyPermission', {
      action: 'lambda:InvokeFunction',
      functionName: api.functionName,
      principal: 'apigateway.amazonaws.com',
      sourceArn: Fn.sub('arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/*/*/*', { Api: httpApi.ref }),
    });
    return httpApi;
  }

  /** The example state machine that runs a Batchplane job as one step. */
  private runJobStateMachine(httpApi: apigw.CfnApi): { stateMachineArn: string; roleArn: string } {
    const role = new iam.Role(this, 'RunJobStateMachineRole', {
      assumedBy: new iam.ServicePrincipal('states.amazonaws.com'),
      inlinePolicies: {
        RunJobStateMachinePolicy: new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({
              actions: ['execute-api:Invoke'],
              resources: [Fn.sub('arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/$default/POST/v1/jobs', { Api: httpApi.ref })],
            }),
            new iam.PolicyStatement({
              actions: ['logs:CreateLogDelivery', 'logs:GetLogDelivery', 'logs:UpdateLogDelivery', 'logs:DeleteLogDelivery', 'logs:ListLogDeliveries', 'logs:PutResourcePolicy', 'logs:DescribeResourcePolicies', 'logs:DescribeLogGroups'],
              resources: ['*'],
            }),
          ],
        }),
      },
    });
    const logGroup = this.logGroup('RunJobStateMachineLogGroup', `/aws/vendedlogs/states/${this.name}-run-job`);
    const definition = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'statemachines', 'run-job.asl.json'), 'utf8');
    const machine = new sfn.CfnStateMachine(this, 'RunJobStateMachine', {
      stateMachineName: `${this.name}-run-job`,
      roleArn: role.roleArn,
      definitionString: definition,
      definitionSubstitutions: {
        ApiEndpoint: Fn.sub('${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}', { Api: httpApi.ref }),
      },
      loggingConfiguration: {
        level: 'ERROR',
        includeExecutionData: false,
        destinations: [{ cloudWatchLogsLogGroup: { logGroupArn: logGroup.logGroupArn } }],
      },
    });
    return { stateMachineArn: machine.ref, roleArn: role.roleArn };
  }
}
