// Pinned session variables: a user's `pins` templates resolved for one login. Pure, so
// the table tests can cover every template; fails closed when a value cannot be known.

export interface PinContext {
  readonly user: string;
  readonly database: string;
  /** Subject of the verified client certificate, when the client presented one. */
  readonly cert?: { readonly cn?: string; readonly o?: string; readonly ou?: string };
}

export type PinResult = { ok: true; values: Map<string, string> } | { ok: false; variable: string; missing: string };

const TEMPLATE = /\$\{(user|database|cert\.cn|cert\.o|cert\.ou)\}/g;

export function resolvePins(pins: Readonly<Record<string, string>>, ctx: PinContext): PinResult {
  const values = new Map<string, string>();
  for (const [variable, template] of Object.entries(pins)) {
    let missing: string | null = null;
    const value = template.replace(TEMPLATE, (_m, name: string) => {
      const v = lookup(name, ctx);
      if (v === undefined) missing ??= name;
      return v ?? '';
    });
    if (missing !== null) return { ok: false, variable, missing };
    values.set(variable, value);
  }
  return { ok: true, values };
}

function lookup(name: string, ctx: PinContext): string | undefined {
  switch (name) {
    case 'user':
      return ctx.user;
    case 'database':
      return ctx.database;
    case 'cert.cn':
      return ctx.cert?.cn;
    case 'cert.o':
      return ctx.cert?.o;
    case 'cert.ou':
      return ctx.cert?.ou;
    default:
      return undefined;
  }
}
