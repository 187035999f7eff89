/**
 * Key layout (docs/storage.md). Keys are text; numbers are fixed-width hex so that byte order
 * is numeric order; '\u0000' separates parts because no name may contain it.
 */
export const SEP = '\u0000';
export const seqKey = (seq: number): string => seq.toString(16).padStart(12, '0');
export const parseSeq = (hex: string): number => Number.parseInt(hex, 16);

export const logKey = (device: string, seq: number) => device + SEP + seqKey(seq);
export const entityKeyOf = (domain: string, entity: string) => domain + SEP + entity;
export const byEntityKey = (domain: string, entity: string, device: string, seq: number) => entityKeyOf(domain, entity) + SEP + device + SEP + seqKey(seq);
export const statusKey = (status: string, device: string, seq: number) => status + SEP + device + SEP + seqKey(seq);
export const waitingKey = (missing: string, waiter: string) => missing + SEP + waiter;
export const countKey = (device: string, status: string) => device + SEP + status;

export function split(key: string): string[] {
  return key.split(SEP);
}

/** Range options for every key starting with `prefix` followed by the separator. */
export const under = (...parts: string[]) => {
  const prefix = parts.join(SEP) + SEP;
  return { gte: prefix, lt: prefix + '\uffff' };
};
