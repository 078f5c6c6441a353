// PgBouncer's own HBA test table, run unchanged against pgbastion's parser and matcher.
// Data: ../shared/conformance/pgbouncer-hba/hba_test.{rules,eval} beside the repository when
// present (the canonical copy); otherwise the byte-identical copy kept in test/conformance/,
// so a clone on its own still runs it. When both exist they must not differ.

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { parseHbaFile } from '../src/hba/parse.js';
import { evaluate } from '../src/hba/rules.js';

function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('package.json not found above the test file');
    dir = up;
  }
  return dir;
}

const sharedDir = path.resolve(repoRoot(), '../shared/conformance/pgbouncer-hba');
const vendoredDir = path.resolve(repoRoot(), 'test/conformance/pgbouncer-hba');
const dataDir = existsSync(sharedDir) ? sharedDir : vendoredDir;
const rulesText = readFileSync(path.join(dataDir, 'hba_test.rules'), 'utf8');
const evalText = readFileSync(path.join(dataDir, 'hba_test.eval'), 'utf8');
if (dataDir === sharedDir) {
  for (const f of ['hba_test.rules', 'hba_test.eval']) {
    t.equal(readFileSync(path.join(vendoredDir, f), 'utf8'), readFileSync(path.join(sharedDir, f), 'utf8'), `test/conformance copy of ${f} is current`);
  }
}

const { rules, errors } = parseHbaFile(rulesText, 'hba_test.rules');
t.same(errors, [], 'hba_test.rules parses without errors');
t.equal(rules.length, 33, 'hba_test.rules holds 33 rules');

interface Case {
  readonly lineNo: number;
  readonly expected: string;
  readonly database: string;
  readonly user: string;
  readonly address: string;
  readonly flag: string | undefined;
}

const cases: Case[] = [];
evalText.split('\n').forEach((raw, i) => {
  const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
  if (line.trim() === '' || line.startsWith('#')) return;
  const f = line.split(/\t+/);
  if (f.length < 4 || f.length > 5) throw new Error(`hba_test.eval:${i + 1}: expected 4 or 5 fields, got ${f.length}`);
  cases.push({ lineNo: i + 1, expected: f[0]!, database: f[1]!, user: f[2]!, address: f[3]!, flag: f[4] });
});

t.equal(cases.length, 72, 'hba_test.eval holds 72 cases');

for (const c of cases) {
  if (c.flag !== undefined && c.flag !== 'tls' && c.flag !== 'replication') {
    t.fail(`hba_test.eval:${c.lineNo}: unknown flag "${c.flag}"`);
    continue;
  }
  const rule = evaluate(rules, {
    address: c.address,
    tls: c.flag === 'tls',
    replication: c.flag === 'replication',
    database: c.database,
    user: c.user,
  });
  const actual = rule === null ? 'reject' : rule.method;
  t.equal(
    actual,
    c.expected,
    `hba_test.eval:${c.lineNo}: ${c.database} ${c.user} ${c.address}${c.flag ? ' ' + c.flag : ''} -> ${c.expected}` +
      (rule ? ` (rule ${rule.source})` : ' (no rule)'),
  );
}
