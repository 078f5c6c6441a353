// Tests for src/tls/certs.ts and src/cli/certs.ts: CA/server/client issuance, SANs, file modes,
// refusal to overwrite, certificate summaries, real mutual-TLS handshakes and CLI argument errors.

import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import forge from 'node-forge';
import t from 'tap';
import { runCerts } from '../src/cli/certs.js';
import {
  CertsError,
  certSummary,
  clientFileBase,
  createCa,
  formatDn,
  initCaDir,
  issueClientCert,
  issueClientToDir,
  issueServerCert,
  parseSanHost,
  type CertKeyPair,
} from '../src/tls/certs.js';

const DAY = 86_400_000;
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

const mode = (p: string): number => statSync(p).mode & 0o777;
const x509 = (pem: string): X509Certificate => new X509Certificate(pem);

function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  return runCerts(
    args,
    (s) => out.push(s),
    (s) => err.push(s),
  ).then((code) => ({ code, out: out.join('\n'), err: err.join('\n') }));
}

// Shared PKI, generated once and in parallel (RSA key generation runs on libuv's thread pool).
const now = Date.now();
const [ca, otherCa, impostorCa] = await Promise.all([
  createCa({ cn: 'Test CA' }),
  createCa({ cn: 'Other CA' }),
  createCa({ cn: 'Test CA' }), // same name as `ca`, different key
]);
const [server, good, fromOtherCa, fromImpostor, expired, notYetValid] = await Promise.all([
  issueServerCert(ca, { hosts: ['db.example.com', '10.1.2.3'] }),
  issueClientCert(ca, { cn: 'svc-tenant-a', o: 'Acme', ou: 'payments' }),
  issueClientCert(otherCa, { cn: 'svc-tenant-a' }),
  issueClientCert(impostorCa, { cn: 'svc-tenant-a' }),
  issueClientCert(ca, { cn: 'old', notBefore: new Date(now - 30 * DAY), notAfter: new Date(now - DAY) }),
  issueClientCert(ca, { cn: 'future', notBefore: new Date(now + DAY), notAfter: new Date(now + 30 * DAY) }),
]);

t.test('createCa: self-signed CA with critical basicConstraints and keyUsage', async (t) => {
  const x = x509(ca.certPem);
  t.equal(x.ca, true);
  t.ok(x.checkIssued(x), 'self-issued');
  t.ok(x.verify(x.publicKey), 'self-signed');
  t.equal(x.publicKey.asymmetricKeyType, 'rsa');
  t.equal(x.publicKey.asymmetricKeyDetails?.modulusLength, 2048);
  t.match(ca.keyPem, /^-----BEGIN PRIVATE KEY-----/);
  t.equal(certSummary(ca.certPem).subject, 'CN=Test CA');

  const f = forge.pki.certificateFromPem(ca.certPem);
  t.equal(f.siginfo.algorithmOid, forge.pki.oids.sha256WithRSAEncryption);
  t.match(f.getExtension('basicConstraints'), { cA: true, critical: true });
  t.match(f.getExtension('keyUsage'), { keyCertSign: true, cRLSign: true, critical: true });
  t.ok(f.getExtension('subjectKeyIdentifier'), 'has subjectKeyIdentifier');
  t.match(f.serialNumber, /^[0-9a-f]{32}$/, '16-byte serial');
  t.ok(parseInt(f.serialNumber.slice(0, 2), 16) < 0x80, 'serial is positive');
  t.not(f.serialNumber, forge.pki.certificateFromPem(otherCa.certPem).serialNumber);

  const s = certSummary(ca.certPem);
  const backdate = now - s.validFrom.getTime();
  t.ok(backdate >= 4 * 60_000 && backdate <= 7 * 60_000, `notBefore is about 5 minutes ago (${backdate} ms)`);
  t.ok(Math.abs(s.validTo.getTime() - (now + 3650 * DAY)) < 5 * 60_000, 'default CA validity is 10 years');
});

t.test('server certificate: SANs, usages, chain', async (t) => {
  const x = x509(server.certPem);
  const caX = x509(ca.certPem);
  t.equal(x.ca, false);
  t.ok(x.checkIssued(caX), 'issued by the CA');
  t.ok(x.verify(caX.publicKey), 'signature verifies with the CA key');
  t.notOk(x.verify(x509(otherCa.certPem).publicKey), 'not signed by another CA');
  t.same(x.keyUsage, [SERVER_AUTH]);
  t.equal(certSummary(server.certPem).cn, 'db.example.com', 'CN is the first --host');
  const san = x.subjectAltName ?? '';
  t.match(san, 'DNS:localhost');
  t.match(san, 'IP Address:127.0.0.1');
  t.match(san, /IP Address:(::1|0:0:0:0:0:0:0:1)\b/i);
  t.match(san, 'DNS:db.example.com');
  t.match(san, 'IP Address:10.1.2.3');
  t.equal(x.checkHost('localhost'), 'localhost');
  t.equal(x.checkHost('db.example.com'), 'db.example.com');
  t.equal(x.checkHost('evil.example.com'), undefined);
  t.equal(x.checkIP('127.0.0.1'), '127.0.0.1');
  t.equal(x.checkIP('::1'), '::1');
  t.equal(x.checkIP('10.1.2.3'), '10.1.2.3');
  t.equal(x.checkIP('10.1.2.4'), undefined);

  const f = forge.pki.certificateFromPem(server.certPem);
  t.match(f.getExtension('keyUsage'), { digitalSignature: true, keyEncipherment: true, keyCertSign: false });
  const aki = f.getExtension('authorityKeyIdentifier') as { value: string } | undefined;
  const caSki = forge.pki.certificateFromPem(ca.certPem).getExtension('subjectKeyIdentifier') as {
    subjectKeyIdentifier: string;
  };
  t.ok(aki, 'has authorityKeyIdentifier');
  t.ok(
    forge.util.bytesToHex(aki!.value).endsWith(caSki.subjectKeyIdentifier),
    'authorityKeyIdentifier is the CA subjectKeyIdentifier',
  );
});

t.test('server certificate: defaults, IPv6 hosts, deduplication, invalid hosts', async (t) => {
  const plain = x509((await issueServerCert(ca)).certPem);
  t.equal(certSummary(plain.toString()).cn, 'localhost');
  t.equal(plain.checkHost('localhost'), 'localhost');
  t.equal(plain.checkIP('::1'), '::1');

  const v6 = x509(
    (await issueServerCert(ca, { hosts: ['2001:db8::7', '[fe80::1]', 'LOCALHOST', '127.0.0.1', '::ffff:10.0.0.1'] })).certPem,
  );
  t.equal(v6.checkIP('2001:db8::7'), '2001:db8::7');
  t.equal(v6.checkIP('fe80::1'), 'fe80::1');
  const san = v6.subjectAltName ?? '';
  t.equal(san.match(/DNS:localhost/gi)?.length, 1, 'localhost once');
  t.equal(san.match(/IP Address:127\.0\.0\.1\b/g)?.length, 1, '127.0.0.1 once');

  t.same(parseSanHost('::ffff:1.2.3.4'), { type: 'ip', value: '::ffff:1.2.3.4', bytes: Buffer.from('00000000000000000000ffff01020304', 'hex') });
  t.same(parseSanHost('2001:DB8:0:0:1::1').value, '2001:db8::1:0:0:1');
  t.same(parseSanHost('*.Example.COM.'), { type: 'dns', value: '*.example.com' });
  for (const bad of ['bad host', 'a..b', '-x.example', 'fe80::1%eth0', '', '*.com', 'x'.repeat(64) + '.example']) {
    t.throws(() => parseSanHost(bad), { name: 'CertsError', code: 'INVALID' }, `rejects ${JSON.stringify(bad)}`);
  }
  await t.rejects(issueServerCert(ca, { hosts: ['ok.example', 'not ok'] }), { code: 'INVALID' });
});

t.test('client certificates: subject, usage, chain, validity', async (t) => {
  const caX = x509(ca.certPem);
  const x = x509(good.certPem);
  t.ok(x.checkIssued(caX));
  t.ok(x.verify(caX.publicKey));
  t.same(x.keyUsage, [CLIENT_AUTH]);
  t.equal(x.ca, false);
  const s = certSummary(good.certPem);
  t.match(s, { cn: 'svc-tenant-a', o: 'Acme', ou: 'payments', subject: 'CN=svc-tenant-a,OU=payments,O=Acme', issuer: 'CN=Test CA' });
  t.equal(s.fingerprint256, x.fingerprint256);
  t.match(s.fingerprint256, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  t.ok(Math.abs(s.validTo.getTime() - (now + 365 * DAY)) < 5 * 60_000, 'default client validity is 365 days');

  const minimal = certSummary(fromOtherCa.certPem);
  t.equal(minimal.subject, 'CN=svc-tenant-a');
  t.equal(minimal.o, undefined);
  t.equal(minimal.ou, undefined);

  const other = x509(fromOtherCa.certPem);
  t.notOk(other.checkIssued(caX), 'other CA: not issued by ours');
  t.notOk(other.verify(caX.publicKey), 'other CA: signature does not verify');
  const imp = x509(fromImpostor.certPem);
  t.notOk(imp.verify(caX.publicKey), 'same-named impostor CA: signature does not verify');

  const e = certSummary(expired.certPem);
  t.equal(e.validFrom.getTime(), Math.floor((now - 30 * DAY) / 1000) * 1000);
  t.equal(e.validTo.getTime(), Math.floor((now - DAY) / 1000) * 1000);
  t.ok(e.validTo.getTime() < Date.now(), 'expired');
  const f = certSummary(notYetValid.certPem);
  t.ok(f.validFrom.getTime() > Date.now(), 'not yet valid');
  t.ok(f.validTo.getTime() > f.validFrom.getTime());

  const days = certSummary((await issueClientCert(ca, { cn: 'short', days: 2 })).certPem);
  t.ok(Math.abs(days.validTo.getTime() - (now + 2 * DAY)) < 5 * 60_000, '--days is honoured');
});

t.test('client certificates: invalid options', async (t) => {
  await t.rejects(issueClientCert(ca, { cn: '' }), { code: 'INVALID' });
  await t.rejects(issueClientCert(ca, { cn: 'x'.repeat(65) }), { code: 'INVALID' });
  await t.rejects(issueClientCert(ca, { cn: 'a\nb' }), { code: 'INVALID' });
  await t.rejects(issueClientCert(ca, { cn: 'a', o: '' }), { code: 'INVALID' });
  await t.rejects(issueClientCert(ca, { cn: 'a', days: 0 }), { code: 'INVALID' });
  await t.rejects(issueClientCert(ca, { cn: 'a', days: 1.5 }), { code: 'INVALID' });
  await t.rejects(issueClientCert(ca, { cn: 'a', notBefore: new Date(now), notAfter: new Date(now - 1) }), {
    code: 'INVALID',
  });
  await t.rejects(issueClientCert({ certPem: server.certPem, keyPem: server.keyPem }, { cn: 'a' }), {
    code: 'BAD_CA',
  }, 'a leaf certificate cannot act as a CA');
  await t.rejects(issueClientCert({ certPem: ca.certPem, keyPem: otherCa.keyPem }, { cn: 'a' }), {
    code: 'BAD_CA',
  }, 'mismatched CA key');
  await t.rejects(issueClientCert({ certPem: 'junk', keyPem: 'junk' }, { cn: 'a' }), { code: 'BAD_CA' });
});

t.test('certSummary: RFC 2253 escaping', async (t) => {
  const c = await issueClientCert(ca, { cn: 'José, "the" <admin>', o: '#1 Corp+Co', ou: ' padded ' });
  const s = certSummary(c.certPem);
  t.equal(s.cn, 'José, "the" <admin>');
  t.equal(s.o, '#1 Corp+Co');
  t.equal(s.ou, ' padded ');
  t.equal(s.subject, 'CN=José\\, \\"the\\" \\<admin\\>,OU=\\ padded\\ ,O=\\#1 Corp\\+Co');
  t.equal(formatDn([[{ type: 'O', value: 'x' }], [{ type: 'CN', value: 'a' }, { type: 'UID', value: 'b' }]]), 'CN=a+UID=b,O=x');
});

t.test('initCaDir: files, modes, refusal to overwrite', async (t) => {
  const root = t.testdir({});
  const dir = path.join(root, 'nested', 'pki');
  const r = await initCaDir(dir, { hosts: ['db.example.com', '10.1.2.3'] });
  t.same(
    r.files,
    ['ca.crt', 'ca.key', 'server.crt', 'server.key'].map((f) => path.join(dir, f)),
  );
  t.equal(mode(dir), 0o700, 'DIR is 0700');
  t.equal(mode(path.join(dir, 'ca.key')), 0o600, 'ca.key is 0600');
  t.equal(mode(path.join(dir, 'server.key')), 0o600, 'server.key is 0600');
  t.equal(mode(path.join(dir, 'ca.crt')), 0o644);
  t.equal(mode(path.join(dir, 'server.crt')), 0o644);
  const caPem = readFileSync(path.join(dir, 'ca.crt'), 'utf8');
  const caKey = readFileSync(path.join(dir, 'ca.key'), 'utf8');
  t.equal(caPem, r.ca.certPem);
  const serverX = x509(readFileSync(path.join(dir, 'server.crt'), 'utf8'));
  t.ok(serverX.checkIssued(x509(caPem)));
  t.ok(serverX.verify(x509(caPem).publicKey));
  t.equal(serverX.checkIP('10.1.2.3'), '10.1.2.3');
  t.equal(serverX.checkHost('db.example.com'), 'db.example.com');

  await t.rejects(initCaDir(dir), { name: 'CertsError', code: 'EXISTS', message: /refusing to overwrite/ });
  const again = await cli(['init', '--dir', dir]);
  t.equal(again.code, 1, 'CLI exit 1 on refusal');
  t.match(again.err, /refusing to overwrite the existing CA/);
  t.equal(readFileSync(path.join(dir, 'ca.crt'), 'utf8'), caPem, 'ca.crt untouched');
  t.equal(readFileSync(path.join(dir, 'ca.key'), 'utf8'), caKey, 'ca.key untouched');
});

t.test('initCaDir: existing directories', async (t) => {
  const root = t.testdir({ empty: {}, keyonly: { 'ca.key': 'precious' }, crtonly: { 'server.crt': 'x' }, busy: { 'notes.txt': 'hi' } });
  const empty = path.join(root, 'empty');
  chmodSync(empty, 0o755);
  await initCaDir(empty);
  t.equal(mode(empty), 0o700, 'an existing empty directory is tightened to 0700');

  const keyonly = path.join(root, 'keyonly');
  await t.rejects(initCaDir(keyonly), { code: 'EXISTS' }, 'ca.key alone blocks init');
  t.equal(readFileSync(path.join(keyonly, 'ca.key'), 'utf8'), 'precious');
  t.notOk(existsSync(path.join(keyonly, 'ca.crt')), 'nothing written');

  const crtonly = path.join(root, 'crtonly');
  await t.rejects(initCaDir(crtonly), { code: 'EXISTS' }, 'an existing server certificate blocks init');
  t.notOk(existsSync(path.join(crtonly, 'ca.crt')));

  const busy = path.join(root, 'busy');
  chmodSync(busy, 0o755);
  await initCaDir(busy);
  t.equal(mode(busy), 0o755, 'a non-empty shared directory keeps its mode');
  t.equal(mode(path.join(busy, 'ca.key')), 0o600);

  const file = path.join(root, 'busy', 'notes.txt');
  await t.rejects(initCaDir(file), { code: 'INVALID', message: /not a directory/ });
  await t.rejects(initCaDir(path.join(root, 'x'), { hosts: ['bad host'] }), { code: 'INVALID' });
  t.notOk(existsSync(path.join(root, 'x')), 'invalid hosts are rejected before creating DIR');
});

t.test('issueClientToDir: files, sanitised names, refusals', async (t) => {
  const root = t.testdir({ noca: {} });
  const dir = path.join(root, 'pki');
  await initCaDir(dir);
  const caPem = readFileSync(path.join(dir, 'ca.crt'), 'utf8');

  const r = await issueClientToDir(dir, { cn: 'svc-tenant-a', o: 'Acme', ou: 'ops', days: 30 });
  t.same(r.files, [path.join(dir, 'svc-tenant-a.crt'), path.join(dir, 'svc-tenant-a.key')]);
  t.equal(mode(path.join(dir, 'svc-tenant-a.key')), 0o600);
  const pem = readFileSync(path.join(dir, 'svc-tenant-a.crt'), 'utf8');
  t.ok(x509(pem).verify(x509(caPem).publicKey));
  t.match(certSummary(pem), { cn: 'svc-tenant-a', o: 'Acme', ou: 'ops' });

  t.equal(clientFileBase('a b/c\\..d'), 'a_b_c_..d');
  t.equal(clientFileBase('..'), '_.');
  t.equal(clientFileBase('José'), 'Jos_');
  const odd = await issueClientToDir(dir, { cn: '../escape me' });
  t.same(odd.files, [path.join(dir, '_._escape_me.crt'), path.join(dir, '_._escape_me.key')]);
  t.equal(certSummary(odd.client.certPem).cn, '../escape me', 'the certificate keeps the real CN');

  await t.rejects(issueClientToDir(dir, { cn: 'svc-tenant-a' }), { code: 'EXISTS' });
  await t.rejects(issueClientToDir(dir, { cn: 'ca' }), { code: 'EXISTS' }, 'cannot clobber the CA');
  await t.rejects(issueClientToDir(dir, { cn: 'server' }), { code: 'EXISTS' });
  t.equal(readFileSync(path.join(dir, 'ca.crt'), 'utf8'), caPem);
  await t.rejects(issueClientToDir(path.join(root, 'noca'), { cn: 'x' }), { code: 'NO_CA', message: /certs init/ });
});

interface HandshakeResult {
  authorized: boolean;
  authorizationError: string | undefined;
  clientAuthorized: boolean;
  clientError: string | undefined;
}

t.test('mutual TLS handshakes against the issued certificates', async (t) => {
  const srv = tls.createServer({
    cert: server.certPem,
    key: server.keyPem,
    ca: ca.certPem,
    requestCert: true,
    rejectUnauthorized: false,
  });
  const serverSockets = new Set<tls.TLSSocket>();
  srv.on('secureConnection', (s) => {
    serverSockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => serverSockets.delete(s));
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of serverSockets) s.destroy();
        srv.close(() => resolve());
      }),
  );
  const { port } = srv.address() as AddressInfo;

  async function handshake(client?: CertKeyPair, servername?: string): Promise<HandshakeResult> {
    const accepted = once(srv, 'secureConnection') as Promise<[tls.TLSSocket]>;
    const opts: tls.ConnectionOptions = { host: '127.0.0.1', port, ca: ca.certPem };
    if (servername !== undefined) opts.servername = servername;
    if (client) {
      opts.cert = client.certPem;
      opts.key = client.keyPem;
    }
    const sock = tls.connect(opts);
    sock.on('error', () => undefined);
    await once(sock, 'secureConnect');
    const [serverSide] = await accepted;
    const result: HandshakeResult = {
      authorized: serverSide.authorized,
      authorizationError: serverSide.authorizationError?.toString(),
      clientAuthorized: sock.authorized,
      clientError: sock.authorizationError?.toString(),
    };
    sock.destroy();
    serverSide.destroy();
    return result;
  }

  const ok = await handshake(good);
  t.equal(ok.authorized, true, 'good client certificate is authorized');
  t.equal(ok.authorizationError, undefined);
  t.equal(ok.clientAuthorized, true, 'client verifies the server by its 127.0.0.1 IP SAN');

  const byName = await handshake(good, 'localhost');
  t.equal(byName.authorized, true);
  t.equal(byName.clientAuthorized, true, 'client verifies the server as localhost');

  const other = await handshake(fromOtherCa);
  t.equal(other.authorized, false, 'certificate from another CA is not authorized');
  t.match(other.authorizationError, /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT/, `authorizationError ${other.authorizationError}`);

  const impostor = await handshake(fromImpostor);
  t.equal(impostor.authorized, false, 'certificate from a same-named CA with another key is not authorized');
  t.ok(impostor.authorizationError, `authorizationError ${impostor.authorizationError}`);

  const old = await handshake(expired);
  t.equal(old.authorized, false);
  t.equal(old.authorizationError, 'CERT_HAS_EXPIRED');

  const early = await handshake(notYetValid);
  t.equal(early.authorized, false);
  t.equal(early.authorizationError, 'CERT_NOT_YET_VALID');

  const none = await handshake(undefined);
  t.equal(none.authorized, false, 'no client certificate is not authorized');
});

t.test('runCerts: init and client through the CLI', async (t) => {
  const root = t.testdir({});
  const dir = path.join(root, 'pki');
  const init = await cli(['init', '--dir', dir, '--host', 'db.example.com', '--host=10.1.2.3']);
  t.equal(init.code, 0, init.err);
  for (const f of ['ca.crt', 'ca.key', 'server.crt', 'server.key']) t.match(init.out, `wrote ${path.join(dir, f)}`);
  t.match(init.out, /server certificate names: localhost, 127\.0\.0\.1, ::1, db\.example\.com, 10\.1\.2\.3/);
  t.equal(mode(dir), 0o700);
  const serverX = x509(readFileSync(path.join(dir, 'server.crt'), 'utf8'));
  t.equal(serverX.checkHost('db.example.com'), 'db.example.com');
  t.equal(serverX.checkIP('10.1.2.3'), '10.1.2.3');

  const client = await cli(['client', '--dir', dir, '--cn', 'app one', '--days', '10', '--o', 'Acme', '--ou=ops']);
  t.equal(client.code, 0, client.err);
  t.match(client.out, `wrote ${path.join(dir, 'app_one.crt')}`);
  t.match(client.out, `wrote ${path.join(dir, 'app_one.key')}`);
  t.equal(mode(path.join(dir, 'app_one.key')), 0o600);
  const s = certSummary(readFileSync(path.join(dir, 'app_one.crt'), 'utf8'));
  t.match(s, { cn: 'app one', o: 'Acme', ou: 'ops' });
  t.ok(Math.abs(s.validTo.getTime() - (Date.now() + 10 * DAY)) < 5 * 60_000);

  const dup = await cli(['client', '--dir', dir, '--cn', 'app one']);
  t.equal(dup.code, 1);
  t.match(dup.err, /refusing to overwrite/);
});

t.test('runCerts: init tightens an existing non-empty DIR to 0700; a refused init leaves it', async (t) => {
  const root = t.testdir({ shared: { 'notes.txt': 'hi' }, taken: { 'ca.key': 'precious' } });
  const shared = path.join(root, 'shared');
  chmodSync(shared, 0o755);
  const r = await cli(['init', '--dir', shared]);
  t.equal(r.code, 0, r.err);
  t.equal(mode(shared), 0o700, 'DIR 0700, as SPEC §1 promises');
  t.equal(mode(path.join(shared, 'ca.key')), 0o600);
  t.equal(mode(path.join(shared, 'server.key')), 0o600);

  const taken = path.join(root, 'taken');
  chmodSync(taken, 0o755);
  t.equal((await cli(['init', '--dir', taken])).code, 1);
  t.equal(mode(taken), 0o755, 'nothing changed when init refuses');
});

t.test('runCerts: help and argument errors', async (t) => {
  const root = t.testdir({ 'a-file': 'x', empty: {} });

  for (const args of [['--help'], ['init', '--help'], ['client', '--help'], ['client', '--cn', 'x', '-h']]) {
    const r = await cli(args);
    t.equal(r.code, 0, `${args.join(' ')} exits 0`);
    t.match(r.out, /^usage: pgbastion certs/, `${args.join(' ')} prints usage`);
  }
  t.match((await cli(['init', '--help'])).out, /--host NAME/);
  t.match((await cli(['client', '--help'])).out, /--cn NAME/);

  const cases: [string[], RegExp][] = [
    [[], /usage: pgbastion certs/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [['init'], /--dir is required/],
    [['init', '--dir'], /--dir needs a value/],
    [['init', '--dir', '--host', 'x'], /--dir needs a value/],
    [['init', '--dir', path.join(root, 'a'), '--dir', path.join(root, 'b')], /--dir given more than once/],
    [['init', '--dir', path.join(root, 'a'), '--cn', 'x'], /unknown argument "--cn"/],
    [['init', '--dir', path.join(root, 'a'), 'extra'], /unknown argument "extra"/],
    [['init', '--dir', path.join(root, 'a'), '--host', 'not a host'], /invalid host "not a host"/],
    [['init', '--dir', path.join(root, 'a-file')], /not a directory/],
    [['client', '--dir', path.join(root, 'empty')], /--cn is required/],
    [['client', '--cn', 'x'], /--dir is required/],
    [['client', '--dir', path.join(root, 'empty'), '--cn', 'x', '--days', 'ten'], /--days needs a whole number/],
    [['client', '--dir', path.join(root, 'empty'), '--cn', 'x', '--days', '0'], /--days needs a whole number/],
    [['client', '--dir', path.join(root, 'empty'), '--cn', 'x', '--days', '99999999'], /--days needs a whole number/],
    [['client', '--dir', path.join(root, 'empty'), '--cn', 'x', '--host', 'h'], /unknown argument "--host"/],
    [['client', '--dir', path.join(root, 'empty'), '--cn', 'x'], /no CA in .*certs init/],
    [['client', '--dir', path.join(root, 'empty'), '--cn', 'x'.repeat(65)], /common name/],
  ];
  for (const [args, message] of cases) {
    const r = await cli(args);
    const name = `certs ${args.map((a) => a.replace(root, 'ROOT')).join(' ')}`;
    t.equal(r.code, 1, `${name}: exit 1`);
    t.match(r.err, message, `${name}: explains`);
    t.equal(r.out, '', `${name}: nothing on stdout`);
  }
  t.notOk(existsSync(path.join(root, 'a')), 'no directory created on argument errors');
  t.notOk(existsSync(path.join(root, 'empty', 'x.crt')));
});

t.test('runCerts: I/O failures exit 2', async (t) => {
  const root = t.testdir({ 'a-file': 'x' });
  const underFile = await cli(['init', '--dir', path.join(root, 'a-file', 'pki')]);
  t.equal(underFile.code, 2, 'a directory below a regular file cannot be created');
  t.match(underFile.err, /^pgbastion certs init: .*ENOTDIR/);

  // A CA whose key cannot be read (a directory in its place) is an I/O failure, not bad input.
  const dir = path.join(root, 'pki');
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'ca.crt'), ca.certPem);
  mkdirSync(path.join(dir, 'ca.key'));
  const badKey = await cli(['client', '--dir', dir, '--cn', 'x']);
  t.equal(badKey.code, 2);
  t.match(badKey.err, /EISDIR/);
});

t.test('CertsError is an Error with a code', async (t) => {
  const e = new CertsError('EXISTS', 'boom');
  t.ok(e instanceof Error);
  t.equal(e.name, 'CertsError');
  t.equal(e.code, 'EXISTS');
});
