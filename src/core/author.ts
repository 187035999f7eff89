/**
 * Writing to one's own log: the next op after a given tip, stamped with the next HLC.
 * Pure: the caller passes physical time and persists the returned tip and clock with the op.
 */
import { hlcNow, type Hlc } from './hlc.ts';
import type { DeviceSigner } from './keys.ts';
import { OP_FORMAT_VERSION, signOp, type Op, type OpBody } from './op.ts';
import type { LogTip } from './chain.ts';

type Header = 'v' | 'team' | 'device' | 'seq' | 'prev' | 'hlc' | 'user';
type Draft<B> = B extends OpBody ? Omit<B, Header> : never;
export type OpDraft = Draft<OpBody>;

export interface AuthorState {
  readonly tip: LogTip;
  readonly clock: Hlc;
}

export interface Author {
  readonly signer: DeviceSigner;
  readonly team: string;
  readonly user: string;
}

export function authorOp(author: Author, state: AuthorState, physicalMs: number, draft: OpDraft): { op: Op; state: AuthorState } {
  const clock = hlcNow(state.clock, physicalMs);
  const body = {
    ...draft,
    v: OP_FORMAT_VERSION,
    team: author.team,
    device: author.signer.device,
    seq: state.tip.seq + 1,
    prev: state.tip.id,
    hlc: clock,
    user: author.user,
  } as OpBody;
  const op = signOp(body, author.signer);
  return { op, state: { tip: { seq: op.seq, id: op.id }, clock } };
}
