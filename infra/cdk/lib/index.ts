export { Batchplane, BatchplaneProps, FunctionName } from './batchplane';
export { propsFromParameters } from './parameters';
