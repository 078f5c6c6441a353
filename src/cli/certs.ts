// `pgbastion certs init|client`: creates a local CA + server certificate, or issues a client
// certificate from that CA (SPEC §1). Exit codes: 0 ok, 1 bad arguments / refusal, 2 I/O failure.

import { chmod } from 'node:fs/promises';
import {
  CertsError,
  DEFAULT_CLIENT_DAYS,
  DEFAULT_SERVER_HOSTS,
  MAX_DAYS,
  certSummary,
  initCaDir,
  issueClientToDir,
  serverSanEntries,
  type ClientCertOptions,
} from '../tls/certs.js';

const USAGE = `usage: pgbastion certs <command> [options]

commands:
  init --dir DIR [--host NAME]...     create a local CA and a server certificate in DIR
  client --dir DIR --cn NAME [--days N] [--o ORG] [--ou UNIT]
                                      issue a client certificate signed by DIR's CA

Run "pgbastion certs <command> --help" for a command's options.`;

const INIT_USAGE = `usage: pgbastion certs init --dir DIR [--host NAME]...

Creates DIR (or tightens an existing one) to mode 0700, with a new local CA and a
server certificate for the proxy:
  DIR/ca.crt       CA certificate (tls.ca; clients' sslrootcert)
  DIR/ca.key       CA private key (0600)
  DIR/server.crt   server certificate (tls.cert)
  DIR/server.key   server private key (0600, tls.key)
The server certificate names ${DEFAULT_SERVER_HOSTS.join(', ')} and every --host.
Refuses to overwrite an existing CA or server certificate.

  --dir DIR     directory to create or use (required)
  --host NAME   extra DNS name or IP address for the server certificate (repeatable)
  --help        show this help`;

const CLIENT_USAGE = `usage: pgbastion certs client --dir DIR --cn NAME [--days N] [--o ORG] [--ou UNIT]

Issues a client certificate signed by DIR's CA and writes DIR/<NAME>.crt and
DIR/<NAME>.key (0600); characters other than A-Z a-z 0-9 . _ - in the file name
are replaced with "_". Refuses to overwrite existing files.

  --dir DIR     directory holding ca.crt and ca.key (required)
  --cn NAME     certificate common name, the identity cert_map matches (required)
  --days N      validity in days, 1 to ${MAX_DAYS} (default ${DEFAULT_CLIENT_DAYS})
  --o ORG       organization (O)
  --ou UNIT     organizational unit (OU)
  --help        show this help`;

class UsageError extends Error {}

interface OptionSpec {
  readonly [name: string]: 'single' | 'multi';
}

/** `--name value` / `--name=value` options; every option takes a value. Returns null on --help. */
function parseOptions(args: readonly string[], spec: OptionSpec): Map<string, string[]> | null {
  const values = new Map<string, string[]>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--help' || arg === '-h') return null;
    const m = /^--([a-z]+)(?:=(.*))?$/s.exec(arg);
    const name = m?.[1];
    if (!m || name === undefined || !(name in spec)) throw new UsageError(`unknown argument "${arg}"`);
    let value = m[2];
    if (value === undefined) {
      value = args[++i];
      if (value === undefined || value.startsWith('--')) throw new UsageError(`--${name} needs a value`);
    }
    const list = values.get(name) ?? [];
    if (spec[name] === 'single' && list.length > 0) throw new UsageError(`--${name} given more than once`);
    list.push(value);
    values.set(name, list);
  }
  return values;
}

function required(values: Map<string, string[]>, name: string): string {
  const v = values.get(name)?.[0];
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function parseDays(text: string): number {
  const n = /^[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_DAYS) {
    throw new UsageError(`--days needs a whole number from 1 to ${MAX_DAYS}`);
  }
  return n;
}

async function runInit(args: string[], out: (s: string) => void): Promise<number> {
  const values = parseOptions(args, { dir: 'single', host: 'multi' });
  if (values === null) {
    out(INIT_USAGE);
    return 0;
  }
  const dir = required(values, 'dir');
  const hosts = values.get('host') ?? [];
  const result = await initCaDir(dir, { hosts });
  // initCaDir leaves a non-empty existing DIR's mode alone; the command promises DIR 0700 (SPEC §1),
  // since DIR now holds the CA key. Only after success: a refused init changes nothing.
  await chmod(dir, 0o700);
  for (const f of result.files) out(`wrote ${f}`);
  const ca = certSummary(result.ca.certPem);
  out(`CA: ${ca.subject}, SHA-256 fingerprint ${ca.fingerprint256}, valid until ${ca.validTo.toISOString()}`);
  out(`server certificate names: ${serverSanEntries(hosts).map((e) => e.value).join(', ')}`);
  return 0;
}

async function runClient(args: string[], out: (s: string) => void): Promise<number> {
  const values = parseOptions(args, { dir: 'single', cn: 'single', days: 'single', o: 'single', ou: 'single' });
  if (values === null) {
    out(CLIENT_USAGE);
    return 0;
  }
  const dir = required(values, 'dir');
  const opts: ClientCertOptions = { cn: required(values, 'cn') };
  const days = values.get('days')?.[0];
  if (days !== undefined) opts.days = parseDays(days);
  const o = values.get('o')?.[0];
  const ou = values.get('ou')?.[0];
  if (o !== undefined) opts.o = o;
  if (ou !== undefined) opts.ou = ou;
  const result = await issueClientToDir(dir, opts);
  for (const f of result.files) out(`wrote ${f}`);
  const s = certSummary(result.client.certPem);
  out(`client certificate: ${s.subject}, valid until ${s.validTo.toISOString()}`);
  return 0;
}

/**
 * Run `pgbastion certs ...`. `out` and `err` print one line each (the caller adds the newline).
 * Exit codes: 0 done or help, 1 invalid arguments or refusal to overwrite, 2 I/O failure.
 */
export async function runCerts(
  args: string[],
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  const [sub, ...rest] = args;
  let usage = USAGE;
  const prefix = sub === 'init' || sub === 'client' ? `pgbastion certs ${sub}` : 'pgbastion certs';
  try {
    switch (sub) {
      case 'init':
        usage = INIT_USAGE;
        return await runInit(rest, out);
      case 'client':
        usage = CLIENT_USAGE;
        return await runClient(rest, out);
      case '--help':
      case '-h':
      case 'help':
        out(USAGE);
        return 0;
      case undefined:
        err(USAGE);
        return 1;
      default:
        err(`pgbastion certs: unknown command "${sub}"\n\n${USAGE}`);
        return 1;
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err(`${prefix}: ${e.message}\n\n${usage}`);
      return 1;
    }
    if (e instanceof CertsError) {
      err(`${prefix}: ${e.message}`);
      return 1;
    }
    err(`${prefix}: ${e instanceof Error ? e.message : String(e)}`);
    return 2;
  }
}
