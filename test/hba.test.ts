// Table tests for the HBA engine: address helpers, pg_hba.conf parser, matcher, YAML rules,
// explain text and the PostgreSQL-worded denial messages.

import t from 'tap';
import type { HbaRuleConfig } from '../src/config/types.js';
import { explain, formatRule } from '../src/hba/explain.js';
import { denialMessage } from '../src/hba/messages.js';
import { parseHbaFile, rulesFromConfig, tokenizeLine } from '../src/hba/parse.js';
import {
  type HbaConnection,
  type HbaRule,
  evaluate,
  formatIPv6,
  maskToPrefix,
  parseClientAddress,
  parseIPv4,
  parseIPv6,
  prefixToMask,
} from '../src/hba/rules.js';

function parseOk(text: string): HbaRule[] {
  const { rules, errors } = parseHbaFile(text, 'pg_hba.conf');
  if (errors.length > 0) throw new Error(`unexpected errors: ${JSON.stringify(errors)}`);
  return rules;
}

function one(text: string): HbaRule {
  const rules = parseOk(text);
  if (rules.length !== 1) throw new Error(`expected one rule, got ${rules.length}`);
  return rules[0]!;
}

function conn(over: Partial<HbaConnection>): HbaConnection {
  return { address: '10.1.1.1', tls: false, database: 'db', user: 'u', replication: false, ...over };
}

function decide(rules: readonly HbaRule[], c: Partial<HbaConnection>): string {
  return evaluate(rules, conn(c))?.method ?? 'reject';
}

t.test('IPv4 parsing', async (t) => {
  const table: [string, number | null][] = [
    ['0.0.0.0', 0],
    ['10.1.2.3', 0x0a010203],
    ['255.255.255.255', 0xffffffff],
    ['1.2.3', null],
    ['1.2.3.4.5', null],
    ['256.1.1.1', null],
    ['01.2.3.4', null], // leading zero: inet_aton would read octal
    ['1..2.3', null],
    ['1.2.3.4.', null],
    ['', null],
    ['a.b.c.d', null],
    ['1.2.3.-4', null],
  ];
  for (const [s, want] of table) t.equal(parseIPv4(s), want, JSON.stringify(s));
});

t.test('IPv6 parsing', async (t) => {
  const table: [string, number[] | null][] = [
    ['::', [0, 0, 0, 0]],
    ['::1', [0, 0, 0, 1]],
    ['1::', [0x00010000, 0, 0, 0]],
    ['ff11:2::1', [0xff110002, 0, 0, 1]],
    ['2001:db8:0:0:0:0:2:1', [0x20010db8, 0, 0, 0x00020001]],
    ['2001:DB8::2:1', [0x20010db8, 0, 0, 0x00020001]],
    ['::ffff:10.1.1.1', [0, 0, 0xffff, 0x0a010101]],
    ['::10.1.1.1', [0, 0, 0, 0x0a010101]],
    ['1:2:3:4:5:6:1.2.3.4', [0x00010002, 0x00030004, 0x00050006, 0x01020304]],
    ['1:2:3:4:5:6:7:8', [0x00010002, 0x00030004, 0x00050006, 0x00070008]],
    ['1:2:3:4:5:6:7::', [0x00010002, 0x00030004, 0x00050006, 0x00070000]],
    ['1:2:3:4:5:6:7:8:9', null],
    ['1:2:3:4:5:6:7:8::', null],
    ['1::2::3', null],
    [':::', null],
    [':1::', null],
    ['1:', null],
    ['12345::', null],
    ['fe80::1%eth0', null],
    ['::ffff:1.2.3', null],
    ['1:2:3:4:5:6:7:1.2.3.4', null],
    ['g::', null],
  ];
  for (const [s, want] of table) t.same(parseIPv6(s), want, JSON.stringify(s));
});

t.test('IPv6 formatting and masks', async (t) => {
  t.equal(formatIPv6([0, 0, 0, 1]), '::1');
  t.equal(formatIPv6([0, 0, 0, 0]), '::');
  t.equal(formatIPv6([0x20010db8, 0, 0x00010000, 1]), '2001:db8::1:0:0:1');
  t.equal(formatIPv6([0x20010000, 0, 0x00010000, 0]), '2001::1:0:0:0');
  t.equal(formatIPv6([0x00010002, 0x00030004, 0x00050006, 0x00070008]), '1:2:3:4:5:6:7:8');
  t.equal(formatIPv6([0x00010000, 0x00030004, 0x00050006, 0x00070008]), '1:0:3:4:5:6:7:8', 'single 0 group not compressed');
  t.equal(formatIPv6([0, 0, 0xffff, 0x0a010101]), '::ffff:10.1.1.1');
  t.same(prefixToMask(4, 0), [0]);
  t.same(prefixToMask(4, 9), [0xff800000]);
  t.same(prefixToMask(4, 32), [0xffffffff]);
  t.same(prefixToMask(6, 12), [0xfff00000, 0, 0, 0]);
  t.same(prefixToMask(6, 64), [0xffffffff, 0xffffffff, 0, 0]);
  t.same(prefixToMask(6, 127), [0xffffffff, 0xffffffff, 0xffffffff, 0xfffffffe]);
  t.equal(maskToPrefix([0xffffff00]), 24);
  t.equal(maskToPrefix([0]), 0);
  t.equal(maskToPrefix([0xffffffff]), 32);
  t.equal(maskToPrefix([0xff00ff00]), null);
  t.equal(maskToPrefix([0xffffffff, 0x80000000, 0, 0]), 33);
  t.equal(maskToPrefix([0xffffffff, 0, 1, 0]), null);
  t.same(parseClientAddress('::ffff:10.1.1.1'), { family: 4, words: [0x0a010101] });
  t.same(parseClientAddress('fe80::1%eth0'), { family: 6, words: [0xfe800000, 0, 0, 1] });
  t.equal(parseClientAddress('not-an-ip'), null);
});

t.test('tokenizer', async (t) => {
  const table: [string, string[][] | string][] = [
    ['host all all', [['host'], ['all'], ['all']]],
    ['  host\t\tall  ', [['host'], ['all']]],
    ['a,b , c d', [['a', 'b', 'c'], ['d']]],
    ['a ,b,  c', [['a', 'b', 'c']]],
    ['"q1""q2" "a , b"', [['q1"q2'], ['a , b']]],
    ['a"b c"d', [['ab cd']]],
    ['""', [['']]],
    ['x # comment, "unbalanced', [['x']]],
    ['trust#comment', [['trust']]],
    ['"a#b"', [['a#b']]],
    ['# only a comment', []],
    ['', []],
    ['"open', 'unterminated quoted string'],
    ['a,', 'missing name after "," following "a"'],
    ['a, # c', 'missing name after "," following "a"'],
    ['a,,b', 'empty name in list after "a"'],
    [',a', 'unexpected "," before a name'],
  ];
  for (const [s, want] of table) {
    const got = tokenizeLine(s);
    if (typeof want === 'string') {
      t.same(got, { ok: false, error: want }, JSON.stringify(s));
    } else {
      t.ok(got.ok, JSON.stringify(s));
      if (got.ok) t.same(got.value.map((f) => f.map((tok) => tok.text)), want, JSON.stringify(s));
    }
  }
  const q = tokenizeLine('"all" all');
  t.ok(q.ok && q.value[0]![0]!.quoted && !q.value[1]![0]!.quoted, 'quoted flag');
  t.same(tokenizeLine('a#b', false), { ok: false, error: 'unexpected "#"' }, 'no comments in YAML values');
});

t.test('parser: columns and keywords', async (t) => {
  const r = one('hostssl  appdb,"all",sameuser , samerole,samegroup,replication,"replication"  u1,+grp,"+lit","all",all  10.0.0.0/8  cert clientcert=verify-full map="my map"');
  t.equal(r.type, 'hostssl');
  t.same(r.databases, [
    { kind: 'name', name: 'appdb' },
    { kind: 'name', name: 'all' },
    { kind: 'sameuser' },
    { kind: 'samerole' },
    { kind: 'samerole' },
    { kind: 'replication' },
    { kind: 'name', name: 'replication' },
  ]);
  t.same(r.users, [
    { kind: 'name', name: 'u1' },
    { kind: 'group', name: 'grp' },
    { kind: 'name', name: '+lit' },
    { kind: 'name', name: 'all' },
    { kind: 'all' },
  ]);
  t.same(r.address, {
    kind: 'cidr',
    family: 4,
    prefix: 8,
    network: [0x0a000000],
    mask: [0xff000000],
    text: '10.0.0.0/8',
  });
  t.equal(r.method, 'cert');
  t.same(r.options, { clientcert: 'verify-full', map: 'my map' });
  t.equal(r.index, 1);
  t.equal(r.line, 1);
  t.equal(r.source, 'pg_hba.conf:1');

  const local = one('local all postgres peer');
  t.same(local.address, { kind: 'none' });
  t.equal(one('local all all ident').method, 'peer', 'ident on local becomes peer, as PostgreSQL');
  t.equal(one('host all all all ident').method, 'ident');
  t.equal(one('"host" all all all trust').type, 'host', 'quoted connection type accepted like PostgreSQL');
  for (const m of ['trust', 'reject', 'scram-sha-256', 'md5', 'password', 'gss', 'sspi', 'ident', 'peer', 'ldap', 'radius', 'cert', 'pam', 'bsd', 'oauth']) {
    t.equal(one(`host all all all ${m}`).method, m, `method ${m}`);
  }
});

t.test('parser: addresses and masks', async (t) => {
  const table: [string, string][] = [
    ['10.0.0.0/8', '10.0.0.0/8'],
    ['10.1.2.3/8', '10.0.0.0/8'], // host bits ignored, as PostgreSQL
    ['0.0.0.0/0', '0.0.0.0/0'],
    ['1.2.3.4/32', '1.2.3.4/32'],
    ['10.0.0.0 255.0.0.0', '10.0.0.0/8'],
    ['127.0.0.0  255.255.255.0', '127.0.0.0/24'],
    ['192.168.1.77\t255.255.255.255', '192.168.1.77/32'],
    ['0.0.0.0 0.0.0.0', '0.0.0.0/0'],
    ['2001:db8::/32', '2001:db8::/32'],
    ['2001:DB8:1:2::/48', '2001:db8:1::/48'],
    ['::1/128', '::1/128'],
    ['::/0', '::/0'],
    ['ff20::/12', 'ff20::/12'],
    ['ff11::0/16', 'ff11::/16'],
    ['fe80:: ffff:ffff::', 'fe80::/32'],
    // IPv4-mapped networks of /96 and longer become IPv4 (clients are matched as IPv4)
    ['::ffff:10.0.0.0/104', '10.0.0.0/8'],
    ['::ffff:10.1.2.3/120', '10.1.2.0/24'],
    ['::ffff:0.0.0.0/96', '0.0.0.0/0'],
    ['::ffff:10.1.2.3 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00', '10.1.2.0/24'],
    ['::ffff:10.0.0.0/80', '::/80'], // shorter: a real IPv6 network, left as written
  ];
  for (const [addr, want] of table) {
    const r = one(`host all all ${addr} md5`);
    t.equal(r.address.kind === 'cidr' ? r.address.text : r.address.kind, want, addr);
  }
  t.same(one('host all all all md5').address, { kind: 'all' });
});

t.test('IPv4-mapped rule addresses match the IPv4 clients they name', async (t) => {
  const rules = parseOk('host all all ::ffff:10.0.0.0/104 reject\nhost all all all trust');
  for (const address of ['10.1.2.3', '::ffff:10.1.2.3']) t.equal(decide(rules, { address }), 'reject', address);
  t.equal(decide(rules, { address: '11.0.0.1' }), 'trust', 'outside the network');
  const entry = (address: string): HbaRuleConfig => ({ type: 'host', database: 'all', user: 'all', address, method: 'reject' });
  const { rules: yaml, errors } = rulesFromConfig([entry('::ffff:10.1.2.3'), entry('::ffff:10.1.2.3 ffff:ffff:ffff:ffff:ffff:ffff:ffff:0')], 'config');
  t.same(errors, []);
  t.same(yaml.map((r) => (r.address.kind === 'cidr' ? r.address.text : r.address.kind)), ['10.1.2.3/32', '10.1.0.0/16']);
  t.equal(decide(yaml, { address: '::ffff:10.1.2.3' }), 'reject', 'a single mapped address matches its client');
});

t.test('parser: errors with line numbers', async (t) => {
  const table: [string, string][] = [
    ['hots all all all trust', 'invalid connection type "hots"'],
    ['hostgssenc all all all trust', 'connection type "hostgssenc" is not supported by pgbastion (it never offers GSSAPI encryption)'],
    ['host,local all all all trust', 'multiple values specified for connection type'],
    ['host', 'end-of-line before database specification'],
    ['host all', 'end-of-line before role specification'],
    ['host all all', 'end-of-line before IP address specification'],
    ['host all all 10.0.0.0/8', 'end-of-line before authentication method'],
    ['local all all', 'end-of-line before authentication method'],
    ['host all all 10.0.0.0/8 trsut', 'invalid authentication method "trsut"'],
    ['host all all 10.0.0.0/8 trust,md5', 'multiple values specified for authentication type'],
    ['host all all 10.0.0.0/33 trust', 'invalid CIDR mask in address "10.0.0.0/33"'],
    ['host all all ::/129 trust', 'invalid CIDR mask in address "::/129"'],
    ['host all all 10.0.0.0/ trust', 'invalid CIDR mask in address "10.0.0.0/"'],
    ['host all all 10.0.0.0/8x trust', 'invalid CIDR mask in address "10.0.0.0/8x"'],
    ['host all all 10.0.0.256/32 trust', 'invalid IP address "10.0.0.256/32"'],
    ['host all all 10.0.0.0,11.0.0.0 trust', 'multiple values specified for host address'],
    ['host all all fe80::1%eth0/128 trust', 'invalid IP address "fe80::1%eth0/128": zone identifiers are not supported'],
    ['host all all 10.0.0.0', 'end-of-line before netmask specification (specify an address range in CIDR notation, or provide a separate netmask)'],
    [
      'host all all 10.1.1.1 trust',
      'invalid IP mask "trust" (address "10.1.1.1" has no "/" prefix length; write it in CIDR notation, e.g. "10.1.1.1/32", or give a netmask column)',
    ],
    ['host all all 10.0.0.0 255.0.255.0 trust', 'invalid IP mask "255.0.255.0": not a contiguous netmask'],
    ['host all all 10.0.0.0 255.0.0.1 trust', 'invalid IP mask "255.0.0.1": not a contiguous netmask'],
    ['host all all 10.0.0.0 ffff:: trust', 'IP address and mask do not match'],
    ['host all all 10.0.0.0 bogus trust', 'invalid IP mask "bogus"'],
    ['host all all db.example.com trust', 'host names are not supported by pgbastion: "db.example.com"'],
    ['host all all .example.com trust', 'host names are not supported by pgbastion: ".example.com"'],
    ['host all all "all" trust', 'host names are not supported by pgbastion: "all"'],
    ['host all all samehost trust', 'address keyword "samehost" is not supported by pgbastion'],
    ['host all all samenet trust', 'address keyword "samenet" is not supported by pgbastion'],
    ['host @dbs.txt all all trust', '@file inclusions are not supported by pgbastion: "@dbs.txt"'],
    ['host all @admins all trust', '@file inclusions are not supported by pgbastion: "@admins"'],
    ['host all /^app all trust', 'regular expressions are not supported by pgbastion: "/^app"'],
    ['host all + all trust', 'missing group name after "+"'],
    ['include other.conf', '"include" directives are not supported by pgbastion'],
    ['include_dir conf.d', '"include_dir" directives are not supported by pgbastion'],
    ['include_if_exists x.conf', '"include_if_exists" directives are not supported by pgbastion'],
    ['host all all all ldap ldapserver', 'authentication option not in name=value format: ldapserver'],
    ['host all all all ldap =x', 'authentication option not in name=value format: =x'],
    ['host all all all cert clientcert=verify-full', 'clientcert can only be configured for "hostssl" rows'],
    ['hostssl all all all cert clientcert=1', 'invalid value for clientcert: "1"'],
    ['host "all all all trust', 'unterminated quoted string'],
  ];
  for (const [line, message] of table) {
    const text = `# header\n\nhost all all 127.0.0.1/32 trust\n${line}\nhost all all ::1/128 trust\n`;
    const { rules, errors } = parseHbaFile(text, 'pg_hba.conf');
    t.same(errors, [{ line: 4, message }], line);
    t.same(
      rules.map((r) => [r.line, r.index]),
      [
        [3, 1],
        [5, 3],
      ],
      `${line}: the good rules around it survive`,
    );
  }
  const multi = parseHbaFile('hots a b c d\n\nhost all all 10.0.0.0/33 md5\r\nlocal all all nope\n', 'x');
  t.same(multi.errors, [
    { line: 1, message: 'invalid connection type "hots"' },
    { line: 3, message: 'invalid CIDR mask in address "10.0.0.0/33"' },
    { line: 4, message: 'invalid authentication method "nope"' },
  ]);
  t.equal(multi.rules.length, 0);
});

t.test('parser: comments, blank lines, CRLF, backslash continuation', async (t) => {
  const text = [
    '# TYPE DATABASE USER ADDRESS METHOD', // 1
    '', // 2
    ' \t \t', // 3
    '\t\t# indented comment', // 4
    'host all all 10.0.0.0/8 md5 # trailing', // 5
    'hostssl appdb \\', // 6
    '    tenant_a_app \\', // 7
    '    10.0.0.0/8 cert', // 8
    'local all all trust\r', // 9
    'host "a\\', // 10: the backslash ends the line, so the quoted name continues
    'b" all all reject', // 11
    '# comment \\', // 12: a continued comment swallows the next line, as in PostgreSQL
    'host all all all trust', // 13
    'host db u 1.2.3.4/32 \\\\', // 14: "\\\\" -> one backslash removed, the other is kept
    '', // 15
  ].join('\n');
  const { rules, errors } = parseHbaFile(text, 'pg_hba.conf');
  t.same(errors, [{ line: 14, message: 'invalid authentication method "\\"' }]);
  t.same(
    rules.map((r) => [r.index, r.line, r.source, formatRule(r)]),
    [
      [1, 5, 'pg_hba.conf:5', 'host all all 10.0.0.0/8 md5'],
      [2, 6, 'pg_hba.conf:6', 'hostssl appdb tenant_a_app 10.0.0.0/8 cert'],
      [3, 9, 'pg_hba.conf:9', 'local all all trust'],
      [4, 10, 'pg_hba.conf:10', 'host ab all all reject'],
    ],
  );
  const eof = parseHbaFile('host all all all \\', 'x');
  t.same(eof.errors, [{ line: 1, message: 'end-of-line before authentication method' }], 'backslash at end of file');
});

t.test('matcher semantics', async (t) => {
  const rules = parseOk(
    [
      'local   all         postgres                 peer',
      'hostssl appdb       tenant_a_app 10.0.0.0/8  cert',
      'hostnossl all       all          10.0.0.0/8  reject',
      'host    sameuser    all          10.0.0.0/8  md5',
      'host    samerole    all          10.0.0.0/8  password',
      'host    replication repl         10.0.0.0/8  scram-sha-256',
      'host    all         +admins      0.0.0.0/0   reject',
      'host    "all"       "all"        192.168.0.0/16 ldap',
      'host    all         all          ::/0        radius',
      'host    all         all          2001:db8::/32 gss',
      'hostssl all         all          all         scram-sha-256',
    ].join('\n'),
  );
  const table: [Partial<HbaConnection>, string][] = [
    [{ address: 'unix', user: 'postgres' }, 'peer'],
    [{ address: 'unix', user: 'postgres', tls: true }, 'peer'],
    [{ address: 'unix', user: 'other' }, 'reject'],
    [{ address: '10.1.1.1', user: 'postgres' }, 'reject'], // local never matches TCP
    [{ address: '10.1.1.1', tls: true, database: 'appdb', user: 'tenant_a_app' }, 'cert'],
    [{ address: '::ffff:10.1.1.1', tls: true, database: 'appdb', user: 'tenant_a_app' }, 'cert'],
    [{ address: '10.1.1.1', tls: false, database: 'appdb', user: 'tenant_a_app' }, 'reject'],
    [{ address: '::ffff:10.9.9.9', tls: false, database: 'x', user: 'y' }, 'reject'],
    [{ address: '10.1.1.1', tls: true, database: 'bob', user: 'bob' }, 'md5'],
    [{ address: '10.1.1.1', tls: true, database: 'bob', user: 'alice' }, 'scram-sha-256'],
    [{ address: '10.1.1.1', tls: true, database: 'repl', user: 'repl', replication: true }, 'scram-sha-256'],
    [{ address: '10.1.1.1', tls: true, database: 'replication', user: 'repl' }, 'scram-sha-256'],
    [{ address: '10.1.1.1', tls: true, database: 'x', user: 'other', replication: true }, 'reject'],
    [{ address: '11.0.0.1', database: 'x', user: 'admins' }, 'reject'], // not +admins: falls through to the end
    [{ address: '11.0.0.1', tls: true, database: 'x', user: 'admins' }, 'scram-sha-256'], // group never matches
    [{ address: '192.168.3.4', database: 'all', user: 'all' }, 'ldap'],
    [{ address: '192.168.3.4', database: 'db', user: 'all' }, 'reject'],
    [{ address: '::ffff:192.168.3.4', database: 'all', user: 'all' }, 'ldap'],
    [{ address: '2001:db8::1' }, 'radius'],
    [{ address: 'fe80::1%eth0' }, 'radius'],
    [{ address: '::ffff:11.0.0.1' }, 'reject'], // mapped IPv4 does not match IPv6 ::/0
    [{ address: '11.0.0.1', tls: true }, 'scram-sha-256'],
    [{ address: 'garbage', tls: true }, 'reject'], // unparsable address matches no host rule
    [{ address: '', tls: true }, 'reject'],
  ];
  for (const [c, want] of table) t.equal(decide(rules, c), want, JSON.stringify(c));

  const edges = parseOk('host all all 2001:db8::/127 trust\nhost all all 2001:db8::/64 md5\nhost all all 128.0.0.0/1 cert\n');
  t.equal(decide(edges, { address: '2001:db8::1' }), 'trust');
  t.equal(decide(edges, { address: '2001:db8::2' }), 'md5');
  t.equal(decide(edges, { address: '2001:db8:0:0:ffff:ffff:ffff:ffff' }), 'md5');
  t.equal(decide(edges, { address: '2001:db8:0:1::' }), 'reject');
  t.equal(decide(edges, { address: '255.255.255.255' }), 'cert');
  t.equal(decide(edges, { address: '127.255.255.255' }), 'reject');
  t.equal(evaluate([], conn({})), null, 'no rules: no match');
});

t.test('formatRule round-trips through the parser', async (t) => {
  const text = [
    'host "q1""q2",sameuser,"all","sameuser" "a , b",+grp,"+x","#h",all 10.1.0.0 255.255.0.0 md5',
    'hostssl all all fe80::/10 cert clientcert=verify-ca map="a b"',
    'local replication,db "" trust',
  ].join('\n');
  const rules = parseOk(text);
  const again = parseOk(rules.map(formatRule).join('\n'));
  t.same(
    again.map(({ databases, users, address, method, options, type }) => ({ databases, users, address, method, options, type })),
    rules.map(({ databases, users, address, method, options, type }) => ({ databases, users, address, method, options, type })),
  );
  t.equal(formatRule(rules[0]!), 'host "q1""q2",sameuser,"all","sameuser" "a , b",+grp,"+x","#h",all 10.1.0.0/16 md5');
});

t.test('YAML rules decide exactly like the same rules in pg_hba.conf syntax', async (t) => {
  const entries: HbaRuleConfig[] = [
    { type: 'local', database: 'all', user: 'postgres', method: 'peer', line: 10 },
    { type: 'hostnossl', database: 'all', user: 'all', address: 'all', method: 'reject', line: 11 },
    { type: 'hostssl', database: 'appdb, reports', user: 'tenant_a_app ,tenant_b_app', address: '10.0.0.0/8', method: 'cert', line: 12 },
    { type: 'hostssl', database: 'sameuser', user: '"all"', address: '10.2.3.4', method: 'md5', line: 13 },
    { type: 'hostssl', database: 'replication', user: 'repl', address: '2001:db8::/32', method: 'scram-sha-256', line: 14 },
    { type: 'hostssl', database: '"q1""q2"', user: 'all', address: '192.168.0.0 255.255.0.0', method: 'password', line: 15 },
    { type: 'host', database: 'all', user: 'all', address: '::1', method: 'trust', line: 16 },
    { type: 'hostssl', database: 'all', user: 'all', address: 'all', method: 'scram-sha-256', line: 17 },
  ];
  const file = [
    'local all postgres peer',
    'hostnossl all all all reject',
    'hostssl appdb,reports tenant_a_app,tenant_b_app 10.0.0.0/8 cert',
    'hostssl sameuser "all" 10.2.3.4/32 md5',
    'hostssl replication repl 2001:db8::/32 scram-sha-256',
    'hostssl "q1""q2" all 192.168.0.0/16 password',
    'host all all ::1/128 trust',
    'hostssl all all all scram-sha-256',
  ].join('\n');
  const fromYaml = rulesFromConfig(entries, 'config.yaml');
  t.same(fromYaml.errors, []);
  const fromFile = parseOk(file);
  t.same(fromYaml.rules.map(formatRule), fromFile.map(formatRule), 'same normalised rules');
  t.same(fromYaml.rules.map((r) => [r.index, r.source, r.line]), entries.map((e, i) => [i + 1, `config.yaml:${e.line}`, e.line]));

  const addresses = ['unix', '10.1.1.1', '::ffff:10.1.1.1', '10.2.3.4', '10.2.3.5', '192.168.9.9', '2001:db8::5', '::1', '8.8.8.8', 'fe80::1'];
  const databases = ['appdb', 'reports', 'all', 'q1"q2', 'tenant_a_app', 'replication'];
  const users = ['tenant_a_app', 'tenant_b_app', 'all', 'postgres', 'repl'];
  let n = 0;
  let mismatches = 0;
  for (const address of addresses) {
    for (const tls of [false, true]) {
      for (const replication of [false, true]) {
        for (const database of databases) {
          for (const user of users) {
            const c: HbaConnection = { address, tls, replication, database, user };
            const a = evaluate(fromYaml.rules, c);
            const b = evaluate(fromFile, c);
            n++;
            if (a?.index !== b?.index || a?.method !== b?.method) {
              mismatches++;
              t.fail(`differs for ${JSON.stringify(c)}`);
            }
          }
        }
      }
    }
  }
  t.equal(mismatches, 0, `${n} connections decided identically`);

  const noLine = rulesFromConfig([{ type: 'host', database: 'all', user: 'all', address: 'all', method: 'trust' }], 'config.yaml');
  t.equal(noLine.rules[0]!.source, 'config.yaml:hba[0]');
  t.equal(noLine.rules[0]!.line, 0);
});

t.test('YAML rule errors', async (t) => {
  const bad = [
    { type: 'hots', database: 'all', user: 'all', address: 'all', method: 'trust' },
    { type: 'host', database: 'all', user: 'all', method: 'trust' },
    { type: 'local', database: 'all', user: 'all', address: 'all', method: 'trust' },
    { type: 'host', database: 'a b', user: 'all', address: 'all', method: 'trust' },
    { type: 'host', database: '', user: 'all', address: 'all', method: 'trust' },
    { type: 'host', database: 'all', user: 'x,', address: 'all', method: 'trust' },
    { type: 'host', database: 'all', user: '"x', address: 'all', method: 'trust' },
    { type: 'host', database: 'all', user: 'a#b', address: 'all', method: 'trust' },
    { type: 'host', database: '@f', user: 'all', address: 'all', method: 'trust' },
    { type: 'host', database: 'all', user: 'all', address: '10.0.0.0/40', method: 'trust' },
    { type: 'host', database: 'all', user: 'all', address: 'db.example.com', method: 'trust' },
    { type: 'host', database: 'all', user: 'all', address: 'samenet', method: 'trust' },
    { type: 'host', database: 'all', user: 'all', address: '10.0.0.0 255.0.255.0', method: 'trust' },
    { type: 'host', database: 'all', user: 'all', address: 'all 255.0.0.0', method: 'trust' },
    { type: 'host', database: 'all', user: 'all', address: 'all', method: 'Trust' },
    { type: 'host', database: 'all', user: 'all', address: 'all', method: 'trust' },
  ] as unknown as HbaRuleConfig[];
  const { rules, errors } = rulesFromConfig(bad, 'config.yaml');
  t.same(errors, [
    { index: 0, field: 'type', message: 'invalid connection type "hots"' },
    { index: 1, field: 'address', message: '"host" rules need an address' },
    { index: 2, field: 'address', message: '"local" rules take no address' },
    { index: 3, field: 'database', message: 'multiple values specified for database (separate names with commas)' },
    { index: 4, field: 'database', message: 'database must not be empty' },
    { index: 5, field: 'user', message: 'missing name after "," following "x"' },
    { index: 6, field: 'user', message: 'unterminated quoted string' },
    { index: 7, field: 'user', message: 'unexpected "#"' },
    { index: 8, field: 'database', message: '@file inclusions are not supported by pgbastion: "@f"' },
    { index: 9, field: 'address', message: 'invalid CIDR mask in address "10.0.0.0/40"' },
    { index: 10, field: 'address', message: 'host names are not supported by pgbastion: "db.example.com"' },
    { index: 11, field: 'address', message: 'address keyword "samenet" is not supported by pgbastion' },
    { index: 12, field: 'address', message: 'invalid IP mask "255.0.255.0": not a contiguous netmask' },
    { index: 13, field: 'address', message: 'unexpected netmask after "all"' },
    { index: 14, field: 'method', message: 'invalid authentication method "Trust"' },
  ]);
  t.same(rules.map((r) => [r.index, r.source]), [[16, 'config.yaml:hba[15]']]);
});

t.test('explain', async (t) => {
  const rules = parseOk(
    [
      '# comment',
      'hostnossl all all all reject',
      'hostssl appdb tenant_a_app 10.0.0.0/8 cert',
      'hostssl all all all scram-sha-256',
    ].join('\n'),
  );
  const match = explain(rules, conn({ address: '10.1.1.1', tls: true, database: 'appdb', user: 'tenant_a_app' }));
  t.equal(match.decision, 'cert');
  t.equal(match.rule, rules[1]);
  t.equal(match.text, 'rule #2 (pg_hba.conf:3) hostssl appdb tenant_a_app 10.0.0.0/8 cert -> cert');
  const rej = explain(rules, conn({ tls: false }));
  t.equal(rej.decision, 'reject');
  t.equal(rej.text, 'rule #1 (pg_hba.conf:2) hostnossl all all all reject -> reject');
  const none = explain(rules, conn({ address: 'unix' }));
  t.same(none, { rule: null, decision: 'reject', text: 'no matching rule -> reject' });
  const yaml = rulesFromConfig([{ type: 'hostssl', database: 'appdb', user: 'tenant_a_app', address: '10.0.0.0/8', method: 'cert', line: 40 }], 'config.yaml');
  t.equal(
    explain(yaml.rules, conn({ tls: true, database: 'appdb', user: 'tenant_a_app' })).text,
    'rule #1 (config.yaml:40) hostssl appdb tenant_a_app 10.0.0.0/8 cert -> cert',
  );
});

t.test('denialMessage wording (PostgreSQL 15+)', async (t) => {
  const base = { address: '10.1.1.1', user: 'u', database: 'd', tls: false };
  t.equal(denialMessage('reject', base), 'pg_hba.conf rejects connection for host "10.1.1.1", user "u", database "d", no encryption');
  t.equal(denialMessage('nomatch', base), 'no pg_hba.conf entry for host "10.1.1.1", user "u", database "d", no encryption');
  t.equal(
    denialMessage('nomatch', { ...base, tls: true }),
    'no pg_hba.conf entry for host "10.1.1.1", user "u", database "d", SSL encryption',
  );
  t.equal(
    denialMessage('reject', { ...base, tls: true }),
    'pg_hba.conf rejects connection for host "10.1.1.1", user "u", database "d", SSL encryption',
  );
  t.equal(
    denialMessage('reject', { ...base, replication: true }),
    'pg_hba.conf rejects replication connection for host "10.1.1.1", user "u", no encryption',
  );
  t.equal(
    denialMessage('nomatch', { ...base, replication: true, tls: true }),
    'no pg_hba.conf entry for replication connection from host "10.1.1.1", user "u", SSL encryption',
  );
  t.equal(
    denialMessage('nomatch', { ...base, address: '::ffff:10.1.1.1' }),
    'no pg_hba.conf entry for host "10.1.1.1", user "u", database "d", no encryption',
    'IPv4-mapped shown as IPv4',
  );
  t.equal(
    denialMessage('nomatch', { ...base, address: '2001:db8::1' }),
    'no pg_hba.conf entry for host "2001:db8::1", user "u", database "d", no encryption',
  );
  t.equal(
    denialMessage('reject', { ...base, address: 'unix' }),
    'pg_hba.conf rejects connection for host "[local]", user "u", database "d", no encryption',
  );
});
