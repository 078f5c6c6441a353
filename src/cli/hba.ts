// `pgbastion hba explain`: which rule decides a connection, and what happens next, without
// starting anything (SPEC §1). Reads the same rules `start` would (hba or hba_file).

import { parseArgs } from 'node:util';
import { defaultConfigPath, loadConfigOrReport } from './load-config.js';
import { certNamesUser } from '../hba/cert-map.js';
import { explain } from '../hba/explain.js';
import { parseClientAddress } from '../hba/rules.js';
import { loadRules } from '../proxy/runtime.js';

const USAGE = `usage: pgbastion hba explain -c FILE --user U --database D --address A [--ssl] [--cert-cn CN]

Prints the first rule that matches the connection and the resulting decision.

  -c, --config FILE   config file (default: $PGBASTION_CONFIG, else config/pgbastion.yaml)
  --user U            user name in the startup packet
  --database D        database name in the startup packet
  --address A         client IP address (IPv4 or IPv6)
  --ssl               the connection uses TLS
  --cert-cn CN        CN of the verified client certificate (for cert rules)
  -h, --help          show this help`;

export async function runHba(args: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === '--help' || sub === '-h' || sub === 'help') {
    out(USAGE);
    return 0;
  }
  if (sub !== 'explain') {
    err(`pgbastion hba: ${sub === undefined ? 'missing command' : `unknown command "${sub}"`}\n\n${USAGE}`);
    return 1;
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        config: { type: 'string', short: 'c' },
        user: { type: 'string' },
        database: { type: 'string' },
        address: { type: 'string' },
        ssl: { type: 'boolean', default: false },
        'cert-cn': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    }));
  } catch (e) {
    err(`pgbastion hba explain: ${(e as Error).message}\n\n${USAGE}`);
    return 1;
  }
  if (values.help) {
    out(USAGE);
    return 0;
  }
  const missing = (['user', 'database', 'address'] as const).filter((k) => !values[k]);
  if (missing.length > 0) {
    err(`pgbastion hba explain: missing ${missing.map((m) => `--${m}`).join(', ')}\n\n${USAGE}`);
    return 1;
  }
  // An address no rule could match would otherwise read as a real "no matching rule -> reject".
  if (parseClientAddress(values.address!) === null) {
    err(`pgbastion hba explain: --address needs an IPv4 or IPv6 address, not "${values.address}"`);
    return 1;
  }
  if (values.config === '') {
    err(`pgbastion hba explain: --config needs a file name\n\n${USAGE}`);
    return 1;
  }
  const file = values.config ?? defaultConfigPath();
  const config = await loadConfigOrReport(file, err);
  if (!config) return 1;
  const conn = { address: values.address!, tls: values.ssl!, database: values.database!, user: values.user!, replication: false };
  const x = explain(loadRules(config), conn);
  out(x.text);
  out(`decision: ${decisionText(x.decision, values['cert-cn'], conn.user, config.cert_map)}`);
  return 0;
}

function decisionText(decision: string, cn: string | undefined, user: string, certMap: Parameters<typeof certNamesUser>[0]): string {
  switch (decision) {
    case 'reject':
      return 'reject (FATAL 28000)';
    case 'trust':
      return 'allow without a password';
    case 'scram-sha-256':
      return 'authenticate with SCRAM-SHA-256';
    case 'cert':
      if (cn === undefined) return `client certificate required; its CN must map to user "${user}"`;
      return certNamesUser(certMap, cn, user)
        ? `allow: certificate CN "${cn}" maps to user "${user}"`
        : `reject: certificate CN "${cn}" does not map to user "${user}" (FATAL 28000)`;
    default:
      return decision;
  }
}
