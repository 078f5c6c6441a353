import t from 'tap';
import { resolvePins } from '../src/session/pins.js';

const cases: { name: string; pins: Record<string, string>; ctx: Parameters<typeof resolvePins>[1]; want: Record<string, string> | { variable: string; missing: string } }[] = [
  { name: 'literal', pins: { 'app.tenant_id': 'a' }, ctx: { user: 'u', database: 'd' }, want: { 'app.tenant_id': 'a' } },
  { name: 'user and database', pins: { 'app.who': '${user}@${database}' }, ctx: { user: 'u', database: 'd' }, want: { 'app.who': 'u@d' } },
  { name: 'template twice', pins: { 'app.x': '${user}-${user}' }, ctx: { user: 'u', database: 'd' }, want: { 'app.x': 'u-u' } },
  { name: 'certificate fields', pins: { 'app.t': '${cert.o}/${cert.ou}/${cert.cn}' }, ctx: { user: 'u', database: 'd', cert: { cn: 'svc', o: 'Org', ou: 'Unit' } }, want: { 'app.t': 'Org/Unit/svc' } },
  { name: 'no certificate: fails closed', pins: { 'app.a': 'x', 'app.t': '${cert.cn}' }, ctx: { user: 'u', database: 'd' }, want: { variable: 'app.t', missing: 'cert.cn' } },
  { name: 'certificate without OU: fails closed', pins: { 'app.t': '${cert.ou}' }, ctx: { user: 'u', database: 'd', cert: { cn: 'svc' } }, want: { variable: 'app.t', missing: 'cert.ou' } },
  { name: 'unknown-looking text stays literal', pins: { 'app.t': '$user {x}' }, ctx: { user: 'u', database: 'd' }, want: { 'app.t': '$user {x}' } },
  { name: 'no pins', pins: {}, ctx: { user: 'u', database: 'd' }, want: {} },
];

for (const c of cases) {
  t.test(c.name, async (t) => {
    const r = resolvePins(c.pins, c.ctx);
    if ('missing' in c.want) {
      t.same(r, { ok: false, ...c.want });
    } else {
      t.ok(r.ok);
      if (r.ok) t.same(Object.fromEntries(r.values), c.want);
    }
  });
}
