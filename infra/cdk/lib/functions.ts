// Each function's code: bootstraps built already, or built for arm64 by cargo-lambda-cdk
// at synth.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { aws_lambda as lambda } from 'aws-cdk-lib';
import { RustFunction } from 'cargo-lambda-cdk';
import { Construct } from 'constructs';
import type { BatchplaneProps, FunctionName } from './batchplane';

export type FunctionProps = Omit<lambda.FunctionProps, 'code' | 'runtime' | 'handler' | 'architecture'>;
export type MakeFunction = (scope: Construct, id: string, binary: FunctionName, props: FunctionProps) => lambda.Function;

/** Each function's code: prebuilt bootstraps when given, else cargo-lambda-cdk builds them. */
export function codeFor(props: BatchplaneProps): MakeFunction {
  const dir = props.prebuiltFunctionsDir;
  if (dir) {
    return (scope, id, binary, p) => {
      const bootstrap = path.join(dir, binary, 'bootstrap');
      if (!fs.existsSync(bootstrap)) {
        throw new Error(`prebuiltFunctionsDir: ${bootstrap} does not exist (build it with \`make lambda\` or \`cargo lambda build --release --arm64 --lambda-dir ${dir}\`)`);
      }
      return new lambda.Function(scope, id, {
        ...p,
        runtime: lambda.Runtime.PROVIDED_AL2023,
        architecture: lambda.Architecture.ARM_64,
        handler: 'bootstrap',
        code: lambda.Code.fromAsset(path.join(dir, binary)),
      });
    };
  }
  const manifestPath = props.manifestPath ?? path.join(__dirname, '..', '..', '..', '..', 'Cargo.toml');
  return (scope, id, binary, p) =>
    new RustFunction(scope, id, {
      ...p,
      manifestPath,
      binaryName: binary,
      runtime: 'provided.al2023',
      architecture: lambda.Architecture.ARM_64,
    });
}

