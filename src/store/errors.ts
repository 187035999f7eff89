import { FieldmeshError } from '../core/errors.ts';

export { StoreCorruptError } from './records.ts';

/** The data dir is open in another process or instance. */
export class StoreLockedError extends FieldmeshError {}

/** The data dir belongs to another team or device, or was written by a newer fieldmesh. */
export class StoreMismatchError extends FieldmeshError {}

/** An operation on a store that is closing or closed. */
export class StoreClosedError extends FieldmeshError {}
