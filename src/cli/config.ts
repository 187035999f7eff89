/**
 * A node's settings in `<dataDir>/config.json`, written by `init`/`enroll`: team, user, role and
 * the domains with their conflict strategies (identical on every node of a team). Merge
 * functions are named ('union', 'max', 'min') so the file stays plain JSON.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Role } from '../core/cert.ts';
import { InvalidInputError } from '../core/errors.ts';
import { isPlainObject } from '../core/value.ts';
import { MERGE_FUNCTIONS, STRATEGIES, type DomainPolicy, type Strategy } from '../core/strategies.ts';
import type { DomainRules } from '../hq/policy.ts';

export const CONFIG_FILE = 'config.json';

export type DomainSpec =
  | Strategy
  | {
      readonly strategy: Strategy;
      readonly merge?: Readonly<Record<string, keyof typeof MERGE_FUNCTIONS>>;
      /** HQ only: roles that may write the domain (default: all). */
      readonly writers?: readonly Role[];
      /** HQ only: JSON Schema of an op's fields. */
      readonly schema?: Record<string, unknown>;
    };

export interface NodeConfig {
  readonly team: string;
  readonly user: string;
  readonly role: Role;
  readonly domains: Readonly<Record<string, DomainSpec>>;
}

/** The domains a new team gets unless told otherwise. */
export const DEFAULT_DOMAINS: Readonly<Record<string, DomainSpec>> = {
  case: { strategy: 'manual', schema: { type: 'object', properties: { title: { type: 'string', maxLength: 200 }, status: { enum: ['open', 'escalated', 'closed'] } }, required: ['title'] } },
  evidence: { strategy: 'merge', merge: { tags: 'union' }, schema: { type: 'object', properties: { tags: { type: 'array', items: { type: 'string' } } } } },
  task: { strategy: 'server-wins', writers: ['server', 'gateway', 'field'] },
  note: 'client-wins',
};

export function toPolicies(domains: Readonly<Record<string, DomainSpec>>): Record<string, DomainPolicy> {
  const out: Record<string, DomainPolicy> = {};
  for (const [domain, spec] of Object.entries(domains)) {
    const { strategy, merge } = typeof spec === 'string' ? { strategy: spec, merge: undefined } : spec;
    if (!(STRATEGIES as readonly string[]).includes(strategy)) throw new InvalidInputError('BAD_CONFIG', `domain ${domain}: unknown strategy ${strategy}`);
    const fns: Record<string, (typeof MERGE_FUNCTIONS)[keyof typeof MERGE_FUNCTIONS]> = {};
    for (const [field, name] of Object.entries(merge ?? {})) {
      if (!Object.hasOwn(MERGE_FUNCTIONS, name)) throw new InvalidInputError('BAD_CONFIG', `domain ${domain}: unknown merge function ${name} (union, max, min)`);
      fns[field] = MERGE_FUNCTIONS[name];
    }
    out[domain] = { strategy, merge: fns };
  }
  return out;
}

/** HQ's acceptance rules from the same config. */
export function toRules(domains: Readonly<Record<string, DomainSpec>>): Record<string, DomainRules> {
  const out: Record<string, DomainRules> = {};
  for (const [domain, spec] of Object.entries(domains)) {
    out[domain] = typeof spec === 'string' ? {} : { ...(spec.writers ? { writers: spec.writers } : {}), ...(spec.schema ? { schema: spec.schema } : {}) };
  }
  return out;
}

export async function readConfig(dataDir: string): Promise<NodeConfig> {
  const path = join(dataDir, CONFIG_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new InvalidInputError('NO_CONFIG', `${dataDir} is not set up: run \`fieldmesh init\` or \`fieldmesh enroll\` first`, { path });
    throw new InvalidInputError('BAD_CONFIG', `cannot read ${path}: ${code === 'EISDIR' ? 'it is a directory' : (err as Error).message}`, { path });
  }
  let config: NodeConfig;
  try {
    config = JSON.parse(text) as NodeConfig;
  } catch (err) {
    throw new InvalidInputError('BAD_CONFIG', `${path} is not valid JSON: ${(err as Error).message}`, { path });
  }
  if (!isPlainObject(config) || typeof config.team !== 'string' || typeof config.user !== 'string' || typeof config.role !== 'string' || !isPlainObject(config.domains)) {
    throw new InvalidInputError('BAD_CONFIG', `${path} must hold an object with team, user and role (strings) and domains (an object of domain: strategy)`, { path });
  }
  try {
    toPolicies(config.domains);
  } catch (err) {
    throw new InvalidInputError('BAD_CONFIG', `${path}: ${(err as Error).message}`, { path });
  }
  return config;
}

export async function writeConfig(dataDir: string, config: NodeConfig): Promise<void> {
  toPolicies(config.domains);
  await writeFile(join(dataDir, CONFIG_FILE), JSON.stringify(config, null, 2) + '\n', { mode: 0o644 });
}
