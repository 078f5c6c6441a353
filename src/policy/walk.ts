// Inspects parsed statements: a generic walk over every node of libpg-query's JSON tree, so a
// set_config() call is found wherever the grammar allows an expression, plus handlers for the
// statement kinds that set variables or leave session state.

import { ENCODING_REFUSED_DETAIL, hidesAscii } from './client-encoding.js';
import { TEMP_PATH, isTempSchema, searchPathHasTemp } from './temp-schema.js';
import { nonStandardStringsReading } from './escape-strings.js';
import type { PinnedNames } from './pinned.js';
import { namesEncoding, unanalysedRefusal } from './lexical.js';
import { UNPARSED, pinnedDetail, refusal, statementsRefusal, stickier, verdict, type Effect, type PolicyVerdict, type Refusal } from './verdict.js';

export interface WalkEnv {
  readonly pins: PinnedNames;
  /** Roles pgbastion's server connections log in as (PolicyClassifierOptions.serverRoles). */
  readonly serverRoles: ReadonlySet<string>;
  /** Parses SQL (a LANGUAGE sql function body); null when it does not parse. */
  readonly parse: (sql: string) => readonly unknown[] | null;
}

/** Names that reach set_config_by_name(): the SQL function and its C symbol (LANGUAGE internal). */
const SET_CONFIG_NAMES: ReadonlySet<string> = new Set(['set_config', 'set_config_by_name']);

/**
 * Built-ins (granted to PUBLIC) that run a query given as text. (table_to_xml and the like
 * run a plain SELECT of a table or view named: an existing view's code, see classify.ts.)
 */
const SQL_RUNNERS: ReadonlySet<string> = new Set(['query_to_xml', 'query_to_xmlschema', 'query_to_xml_and_xmlschema', 'ts_stat', 'ts_rewrite']);

/** prepared.ts names every statement it prepares on a server connection this way. */
const PROXY_STATEMENT_PREFIX = 'pgbastion_';

/** The sticky reason for a seeded random(), one of verdict.ts's OUTLIVES_RESET. */
const SEEDED = 'setseed';

/** Session-level advisory locks; the _xact_ variants end with the transaction and are fine. */
const SESSION_LOCKS: ReadonlySet<string> = new Set([
  'pg_advisory_lock',
  'pg_advisory_lock_shared',
  'pg_try_advisory_lock',
  'pg_try_advisory_lock_shared',
]);

/** parsenodes.h CURSOR_OPT_HOLD. */
const CURSOR_OPT_HOLD = 0x20;

/** How the statement that owns a nested SET is named in a refusal. */
const SET_OWNER: Readonly<Record<string, string>> = {
  AlterRoleSetStmt: 'ALTER ROLE ... ',
  AlterDatabaseSetStmt: 'ALTER DATABASE ... ',
  AlterSystemStmt: 'ALTER SYSTEM ',
  CreateFunctionStmt: 'CREATE FUNCTION ... ',
  AlterFunctionStmt: 'ALTER FUNCTION ... ',
};

const DML_VERB: Readonly<Record<string, string>> = {
  UpdateStmt: 'UPDATE',
  MergeStmt: 'MERGE INTO',
  InsertStmt: 'INSERT INTO',
  DeleteStmt: 'DELETE FROM',
};

type Obj = Record<string, unknown>;

interface Frame {
  readonly node: unknown;
  /** The node type when known from a `{ Type: {...} }` wrapper. */
  readonly type: string | null;
  /** The nearest enclosing statement type (for refusal wording and CREATE-only rules). */
  readonly owner: string;
  /** True only for a statement as the client wrote it, not one nested in another. */
  readonly top: boolean;
  /** Inside a statement that stores expressions PostgreSQL evaluates later (STORES). */
  readonly stored: boolean;
}

/**
 * Statements that store expressions PostgreSQL evaluates later, in whatever session uses the
 * object: a view's or rule's query, column defaults, checks and generated columns, policies,
 * domain constraints, index expressions, trigger conditions, statistics, a function's
 * argument defaults, BEGIN ATOMIC body and SET clauses (SET seed reseeds at each call), a
 * materialized view's query (at each REFRESH).
 */
const STORES: ReadonlySet<string> = new Set([
  'ViewStmt', 'RuleStmt', 'CreatePolicyStmt', 'AlterPolicyStmt', 'CreateStmt', 'CreateForeignTableStmt', 'AlterTableStmt',
  'CreateDomainStmt', 'AlterDomainStmt', 'CreateTrigStmt', 'IndexStmt', 'CreateStatsStmt', 'CreateFunctionStmt', 'AlterFunctionStmt',
]);

/**
 * The verdict for parsed statements. `nested` is set for a function body: there, only
 * refusals count (its session effects happen when it is called, which no text shows).
 */
export function inspect(stmts: readonly unknown[], env: WalkEnv, nested = false): PolicyVerdict {
  const w = new Walk(env, nested);
  for (const stmt of stmts) {
    w.run(stmt);
    if (w.refuse !== null) break;
  }
  return verdict(w.refuse, w.sticky);
}

class Walk {
  refuse: Refusal | null = null;
  sticky: string | null = null;
  private readonly pins: PinnedNames;
  /** The frame of the node being visited (for stickCall). */
  private frame: Frame | null = null;

  constructor(
    private readonly env: WalkEnv,
    private readonly nested: boolean,
  ) {
    this.pins = env.pins;
  }

  /** Iterative on purpose: a long `a + b + ...` chain nests deeper than the JS call stack. */
  run(stmt: unknown): void {
    const stack: Frame[] = [{ node: stmt, type: null, owner: '', top: true, stored: false }];
    while (stack.length > 0 && this.refuse === null) {
      const f = stack.pop()!;
      const node = f.node;
      if (Array.isArray(node)) {
        for (let i = node.length - 1; i >= 0; i--) stack.push({ node: node[i], type: null, owner: f.owner, top: false, stored: f.stored });
        continue;
      }
      if (typeof node !== 'object' || node === null) continue;
      const o = node as Obj;
      const keys = Object.keys(o);
      if (f.type === null && keys.length === 1 && /^[A-Z]/.test(keys[0]!)) {
        const type = keys[0]!;
        const owner = type.endsWith('Stmt') && type !== 'VariableSetStmt' ? type : f.owner;
        const inner = o[type];
        const stored = f.stored || STORES.has(type) || (type === 'CreateTableAsStmt' && (inner as Obj | null)?.objtype === 'OBJECT_MATVIEW');
        stack.push({ node: inner, type, owner, top: f.top, stored });
        continue;
      }
      const type = f.type ?? bareType(o);
      this.frame = f;
      const skip = type === null ? null : this.visit(type, o, f);
      for (let i = keys.length - 1; i >= 0; i--) {
        const k = keys[i]!;
        const v = o[k];
        if (k === skip || typeof v !== 'object' || v === null) continue;
        stack.push({ node: v, type: null, owner: f.owner, top: false, stored: f.stored });
      }
    }
  }

  private refuseWith(variable: string, detail: string): void {
    this.refuse ??= refusal(variable, detail);
  }

  private refuseDefaults(owner: string): void {
    const what = owner === 'AlterRoleSetStmt' ? 'a role' : 'a database';
    this.refuse ??= statementsRefusal(
      `permission denied to set the configuration defaults of ${what} through pgbastion`,
      "Every server connection pgbastion opens starts from them, shared by all its clients: ALTER ROLE|DATABASE ... SET goes to PostgreSQL directly.",
    );
  }

  /** ALTER DATABASE (connection limit, rename, owner): every server connection pgbastion opens to it depends on them. */
  private refuseDatabase(): void {
    this.refuse ??= statementsRefusal(
      'permission denied to alter database through pgbastion',
      'Every server connection pgbastion opens logs in to it, for all its clients: ALTER DATABASE goes to PostgreSQL directly.',
    );
  }

  /** ALTER ROLE (password, attributes, rename) of the role the client runs as, or of any server role. */
  private alterRole(spec: unknown): void {
    // (A bare RoleSpec, as the parser gives it in these statements.)
    const rs = spec as { roletype?: unknown; rolename?: unknown } | undefined;
    if (rs === undefined || rs === null) return;
    const type = str(rs.roletype);
    const name = str(rs.rolename);
    const shared = type === 'ROLESPEC_CURRENT_USER' || type === 'ROLESPEC_SESSION_USER' || type === 'ROLESPEC_CURRENT_ROLE' || this.env.serverRoles.has(name);
    if (!shared) return;
    this.refuse ??= statementsRefusal(
      'permission denied to alter role',
      `${type === 'ROLESPEC_CSTRING' ? `"${name}"` : 'The current role'} is a role pgbastion's server connections log in as, shared by all their clients (a new password would lock them all out): ALTER ROLE of it goes to PostgreSQL directly.`,
    );
  }

  private refuseEncoding(): void {
    this.refuseWith('client_encoding', ENCODING_REFUSED_DETAIL);
  }

  private stick(reason: string): void {
    if (!this.nested) this.sticky = stickier(this.sticky, reason);
  }

  /**
   * Session state a call leaves (set_config, an advisory lock, setseed, …). In stored code
   * (STORES) it is left later, by whichever session evaluates the object, where no statement
   * text shows it: while variables are pinned that is refused, as a SQL function body that
   * leaves state is; without pins the creating session is sticky, as for the call itself.
   */
  private stickCall(reason: string): void {
    const first = this.pins.first;
    if (first !== null && this.frame?.stored === true) {
      this.refuseWith(first, pinnedDetail(`stored code (a view, rule, default, check, policy, index, trigger condition, …) that leaves session state (${reason})`, first, 'could change', ' (it runs later, in sessions nothing would make sticky)'));
      return;
    }
    this.stick(reason);
  }

  /** Applies the rule for one node; returns a field the walk must not descend into. */
  private visit(type: string, o: Obj, f: Frame): string | null {
    switch (type) {
      case 'VariableSetStmt':
        this.variableSet(o, f);
        return null;
      case 'DiscardStmt':
        if (o.target === 'DISCARD_ALL' && this.pins.first !== null) {
          this.refuseWith(this.pins.first, pinnedDetail('DISCARD ALL', this.pins.first, 'would reset'));
        }
        return null;
      case 'FuncCall':
        this.funcCall(o);
        return 'funcname'; // its name is judged here, not by the String rule below
      case 'String':
        this.nameString(str(o.sval), f);
        return null;
      case 'RangeVar':
        if (o.relpersistence === 't' || isTempSchema(str(o.schemaname))) this.stick(tempReason(f.owner));
        return null;
      case 'ColumnRef':
        // rel.fn is fn(rel) to PostgreSQL when no column fn exists (attribute notation).
        if (Array.isArray(o.fields) && o.fields.length >= 2) this.attributeCall(o.fields[o.fields.length - 1]);
        return null;
      case 'CreateCastStmt':
        // An implicit (or assignment) cast lets a value reach functions written for another
        // type without any call naming it: q.fn runs fn(q) through one. Explicit casts show.
        if (o.context !== 'COERCION_EXPLICIT' && this.pins.first !== null) {
          this.refuseWith(this.pins.first, pinnedDetail('an implicit or assignment cast', this.pins.first, 'could change', ' (through it rel.fn calls fn(rel) unseen)'));
        }
        return null;
      case 'A_Indirection':
        // (row).fn, the same call.
        if (Array.isArray(o.indirection) && o.indirection.length > 0) this.attributeCall(o.indirection[o.indirection.length - 1]);
        return null;
      case 'ViewStmt':
      case 'RuleStmt':
        // A view over pg_settings is updatable, and pg_settings' own rule runs set_config():
        // UPDATE v SET setting = 'SJIS' WHERE name = 'client_encoding'. So is a table a
        // CREATE RULE "_RETURN" ... ON SELECT turns into one; a rule's actions could write it.
        if (this.pins.first !== null && /"relname":"pg_settings"/i.test(JSON.stringify(o))) {
          this.refuseWith(this.pins.first, pinnedDetail(`a ${type === 'ViewStmt' ? 'view' : 'rule'} over pg_settings`, this.pins.first, 'could change', ' (writing to it is SET)'));
        }
        return null;
      case 'UpdateStmt':
      case 'MergeStmt':
      case 'InsertStmt':
      case 'DeleteStmt':
        this.settingsView(type, o);
        return null;
      case 'DoStmt':
        this.doBlock(o);
        return null;
      case 'CreateFunctionStmt':
        this.functionBody(o);
        return null;
      case 'PrepareStmt':
        this.statementName(o);
        this.stick('PREPARE');
        return null;
      case 'ExecuteStmt':
      case 'DeallocateStmt':
        this.statementName(o);
        return null;
      case 'ListenStmt':
        this.stick('LISTEN');
        return null;
      case 'AlterRoleStmt':
        this.alterRole(o.role);
        return null;
      case 'RenameStmt':
        if (o.renameType === 'OBJECT_ROLE') this.alterRole({ roletype: 'ROLESPEC_CSTRING', rolename: o.subname });
        if (o.renameType === 'OBJECT_DATABASE') this.refuseDatabase();
        return null;
      case 'AlterDatabaseStmt':
        this.refuseDatabase();
        return null;
      case 'AlterOwnerStmt':
        if (o.objectType === 'OBJECT_DATABASE') this.refuseDatabase();
        return null;
      case 'LoadStmt':
        this.stick('LOAD');
        return null;
      case 'DeclareCursorStmt':
        if ((num(o.options) & CURSOR_OPT_HOLD) !== 0) this.stick('DECLARE WITH HOLD');
        return null;
      default:
        return null;
    }
  }

  /** SET / RESET in every place the grammar nests one (ALTER ROLE, function SET clauses, ...). */
  private variableSet(o: Obj, f: Frame): void {
    const kind = str(o.kind);
    const name = str(o.name);
    const local = o.is_local === true;
    // ALTER ROLE|DATABASE ... SET: the defaults every later server connection starts from,
    // shared by every client of the role (a search_path with pg_temp, read-only, a timeout).
    const defaults = f.owner === 'AlterRoleSetStmt' || f.owner === 'AlterDatabaseSetStmt';
    if (kind === 'VAR_RESET_ALL') {
      const first = this.pins.first;
      if (first !== null) this.refuseWith(first, pinnedDetail(`${SET_OWNER[f.owner] ?? ''}RESET ALL`, first, 'would reset'));
      else if (defaults) this.refuseDefaults(f.owner);
      else if (f.top) this.stick('RESET');
      return;
    }
    const pinned = this.pins.match(name);
    if (pinned !== null) {
      const [form, verb] = setForm(kind, local);
      this.refuseWith(pinned, pinnedDetail(`${SET_OWNER[f.owner] ?? ''}${form}`, pinned, verb));
      return;
    }
    if (defaults) return this.refuseDefaults(f.owner);
    const lower = name.toLowerCase();
    // Wherever it is set (SET LOCAL, a function's SET clause, ALTER ROLE): see client-encoding.ts.
    if (lower === 'client_encoding' && setValues(o).some(hidesAscii)) return this.refuseEncoding();
    // A function's SET clause is in force at each of its calls, later, in sessions nothing
    // makes sticky: a path with pg_temp there (or FROM CURRENT, which could be one) turns
    // the body's unqualified CREATEs into temporary objects that outlive the call.
    const clause = f.owner === 'CreateFunctionStmt' || f.owner === 'AlterFunctionStmt';
    const first = this.pins.first;
    if (lower === 'search_path' && clause && first !== null && (kind === 'VAR_SET_CURRENT' || setValues(o).some(searchPathHasTemp))) {
      this.refuseWith(first, pinnedDetail(`a function's SET search_path ${kind === 'VAR_SET_CURRENT' ? 'FROM CURRENT' : 'naming pg_temp'}`, first, 'could change', ' (at its calls the objects it creates unqualified are temporary, left on a shared server connection)'));
      return;
    }
    // Also SET LOCAL, or a function's SET clause: unqualified CREATEs in its reach are temporary.
    if (lower === 'search_path' && setValues(o).some(searchPathHasTemp)) this.stick(TEMP_PATH);
    // The seed reseeds random() at once, and no RESET or DISCARD ALL reseeds it back: even a
    // SET LOCAL, or one in a function's SET clause, leaves the sequence to the next client.
    if (lower === 'seed') return this.stickCall(SEEDED);
    // Only a statement the client sent changes its session; SET LOCAL and SET TRANSACTION end with the transaction.
    if (!f.top || local) return;
    if (kind === 'VAR_SET_MULTI' && lower.startsWith('transaction')) return;
    if (kind === 'VAR_RESET') this.stick('RESET');
    else if (lower === 'role') this.stick('SET ROLE');
    else if (lower === 'session_authorization') this.stick('SET SESSION AUTHORIZATION');
    else this.stick('SET');
  }

  /**
   * A field reference that may be a call in attribute notation (`q.ts_stat` runs ts_stat(q)
   * when the row casts to text): the function names funcCall judges get the verdict a call
   * with an unknown argument would. (A column of one of those names is refused too: rare,
   * and the safe side.)
   */
  private attributeCall(field: unknown): void {
    const name = str((field as { String?: { sval?: unknown } } | undefined)?.String?.sval).toLowerCase();
    if (name === 'pg_terminate_backend' || name === 'pg_cancel_backend') {
      this.refuse ??= statementsRefusal('permission denied to signal server processes through pgbastion', `${name}, called in attribute notation, would hit the server connections other clients use.`);
    } else if (SET_CONFIG_NAMES.has(name) || SQL_RUNNERS.has(name)) {
      const first = this.pins.first;
      if (first !== null) this.refuseWith(first, pinnedDetail(`${name}() in attribute notation (rel.${name})`, first, 'could change'));
      else if (SET_CONFIG_NAMES.has(name)) this.stickCall('set_config');
    } else if (SESSION_LOCKS.has(name)) this.stickCall('advisory lock');
    else if (name === 'setseed') this.stickCall(SEEDED);
  }

  /** SQL PREPARE, EXECUTE or DEALLOCATE of a name: not one of the statements pgbastion made for other clients. */
  private statementName(o: Obj): void {
    const name = str(o.name);
    if (name.toLowerCase().startsWith(PROXY_STATEMENT_PREFIX)) {
      this.refuse ??= statementsRefusal(`permission denied for prepared statement "${name}"`, 'Names that start with pgbastion_ are the statements pgbastion prepares for its clients, on server connections they share.');
    }
  }

  private funcCall(o: Obj): void {
    const name = lastName(o.funcname);
    if ((name === 'pg_terminate_backend' || name === 'pg_cancel_backend') && !ownBackend(o)) {
      // Every client of a server role may signal the role's backends, which other clients
      // share; its own (pg_backend_pid()) is the one it holds now.
      this.refuse ??= statementsRefusal(
        `permission denied to signal server processes through pgbastion`,
        `${name}() would hit the server connections other clients use (as the same role): cancel your own statement with a CancelRequest.`,
      );
      return;
    }
    if (name === 'setseed') {
      this.stickCall(SEEDED); // the session's random() sequence, as SET seed
      return;
    }
    if (SESSION_LOCKS.has(name)) {
      this.stickCall('advisory lock');
      return;
    }
    if (SQL_RUNNERS.has(name)) return this.sqlRunner(name, o);
    if (name !== 'set_config') return; // any schema: a same-named function elsewhere errs towards refusing
    const args = Array.isArray(o.args) ? (o.args as unknown[]) : [];
    const target = o.func_variadic === true ? undefined : argument(args, 0, 'setting_name');
    const constant = stringConst(target);
    if (constant === null) {
      const first = this.pins.first;
      if (first !== null) {
        this.refuseWith(first, pinnedDetail('set_config() with a name that is not a string constant', first, 'could change'));
        return;
      }
      this.stickCall('set_config');
      return;
    }
    const pinned = this.pins.match(constant);
    if (pinned !== null) {
      this.refuseWith(pinned, pinnedDetail('set_config()', pinned));
      return;
    }
    if (constant.toLowerCase() === 'client_encoding') {
      const value = stringConst(argument(args, 1, 'new_value'));
      if (value === null || hidesAscii(value)) return this.refuseEncoding();
    }
    if (constant.toLowerCase() === 'seed') return this.stickCall(SEEDED);
    if (constant.toLowerCase() === 'search_path') {
      const value = stringConst(argument(args, 1, 'new_value'));
      if (value === null || searchPathHasTemp(value)) this.stickCall(TEMP_PATH);
    }
    if (!isTrue(argument(args, 2, 'is_local'))) this.stickCall('set_config');
  }

  /**
   * A built-in that runs SQL it is given as text (query_to_xml('SELECT set_config(…)', …)):
   * the text is data here, and can be assembled at run time, so while variables are pinned
   * it is refused, as an opaque set_config is. A text given as a string constant is first
   * inspected as the statements it is (so a signal to another client's backend is refused
   * with or without pins, naming that reason); one assembled at run time, without pins, is
   * the limit README names.
   */
  private sqlRunner(name: string, o: Obj): void {
    const args = Array.isArray(o.args) ? (o.args as unknown[]) : [];
    // ts_rewrite(query, target, substitute) runs nothing; ts_rewrite(query, select) does.
    if (name === 'ts_rewrite' && args.length !== 2) return;
    const [index, param] = name === 'ts_rewrite' ? [1, 'select'] : name === 'ts_stat' ? [0, 'sqlquery'] : [0, 'query'];
    const text = stringConst(argument(args, index, param));
    if (text !== null) this.sqlText(text, `the SQL ${name}() runs`, `${name}()`, true);
    const first = this.pins.first;
    if (first !== null) this.refuseWith(first, pinnedDetail(`${name}(), which runs SQL given as text,`, first, 'could change'));
  }

  /** An identifier or name-list element: set_config named outside a call, or a pg_temp schema. */
  private nameString(sval: string, f: Frame): void {
    const lower = sval.toLowerCase();
    if (SET_CONFIG_NAMES.has(lower) && this.pins.first !== null) {
      // e.g. CREATE AGGREGATE a(text, bool) (sfunc = set_config, initcond = 'app.tenant_id'),
      // or CREATE FUNCTION ... LANGUAGE internal AS 'set_config_by_name'.
      this.refuseWith(this.pins.first, pinnedDetail(`a reference to ${lower} outside a direct call`, this.pins.first, 'could change'));
      return;
    }
    if (isTempSchema(lower) && /^(Create|Define|View|CompositeType)/.test(f.owner)) this.stick('temporary object');
    // An operator, aggregate or cast over a function the policy judges at its calls
    // (CREATE OPERATOR ### (function = pg_terminate_backend)): calling it is an A_Expr, out of
    // funcCall's sight, so the definition gets the verdict the call would.
    if (!/^(Define|CreateCast)/.test(f.owner)) return;
    if (lower === 'pg_terminate_backend' || lower === 'pg_cancel_backend') {
      this.refuse ??= statementsRefusal('permission denied to signal server processes through pgbastion', `an operator, aggregate or cast over ${lower}() would hit the server connections other clients use.`);
    } else if ((SQL_RUNNERS.has(lower) || SESSION_LOCKS.has(lower) || lower === 'setseed') && this.pins.first !== null) {
      this.refuseWith(this.pins.first, pinnedDetail(`an operator, aggregate or cast over ${lower}()`, this.pins.first, 'could change', ' (its calls are not seen as calls of it)'));
    } else if (SESSION_LOCKS.has(lower) || lower === 'setseed') this.stick(lower);
  }

  /** pg_settings is a view whose UPDATE rule calls set_config(): writing to it is SET. */
  private settingsView(type: string, o: Obj): void {
    const rel = o.relation as Obj | undefined;
    if (rel === undefined || str(rel.relname).toLowerCase() !== 'pg_settings') return;
    if (this.pins.first === null) return this.stick('SET');
    this.refuseWith(this.pins.first, pinnedDetail(`${DML_VERB[type] ?? 'writing to'} pg_settings`, this.pins.first, 'could change', ' (it is equivalent to SET)'));
  }

  /**
   * A DO body is procedural code this module cannot parse: refused while variables are pinned
   * (refuseProcedural), and with none, sticky (its session effects are unknowable).
   */
  private doBlock(o: Obj): void {
    const body = defElemStrings(o.args, 'as').join('\n');
    if (this.refuseByText(body, 'a DO block')) return;
    if (namesEncoding(body)) return this.refuseEncoding();
    if (this.refuseProcedural('a DO block')) return;
    this.stick('DO');
  }

  /**
   * Procedural code (a DO block, a function body in any language but SQL) while variables are
   * pinned: it can assemble and run any statement at run time ('ALTER ROLE ' || …, a switch of
   * client_encoding and back inside one batch), which no reading of its text can see, so it is
   * refused whatever it mentions. Functions an administrator created are the limit
   * (classify.ts). Returns whether it refused.
   */
  private refuseProcedural(what: string): boolean {
    const first = this.pins.first;
    if (first === null) return false;
    this.refuseWith(first, pinnedDetail(what, first, 'could change', ' (procedural code can run any statement it assembles)'));
    return true;
  }

  /**
   * A string function body: LANGUAGE sql is parsed and inspected like any statement (so the
   * usual `SELECT current_setting('app.tenant_id')` helper passes); any other language is
   * procedural code, refused as DO is. BEGIN ATOMIC bodies are already in the tree.
   */
  private functionBody(o: Obj): void {
    const body = defElemStrings(o.options, 'as');
    if (body.length === 0) return;
    const language = (defElemStrings(o.options, 'language')[0] ?? 'sql').toLowerCase();
    const what = o.is_procedure === true ? 'CREATE PROCEDURE' : 'CREATE FUNCTION';
    if (language === 'sql') return this.sqlBody(body[0]!, what);
    if (this.refuseByText(body.join('\n'), `${what} (LANGUAGE ${language})`)) return;
    if (namesEncoding(body.join('\n'))) return this.refuseEncoding();
    this.refuseProcedural(`${what} (LANGUAGE ${language})`);
  }

  /**
   * A LANGUAGE sql body, parsed anew by PostgreSQL at every call under the
   * standard_conforming_strings then in force (its own SET clause, the session's, a SET
   * LOCAL): both readings are inspected, and one that does not parse is procedural code as
   * far as this module can tell. While variables are pinned, a body that would leave session
   * state (a session SET, a temporary table, …) is refused too: at its call, later, nothing
   * in the statement's text would make that client sticky.
   */
  private sqlBody(text: string, what: string): void {
    this.sqlText(text, `${what} body`, what, false);
  }

  /**
   * SQL that PostgreSQL parses from `text` (a function body at each call, a SQL runner's
   * query now), under the standard_conforming_strings then in force: both readings are
   * inspected. One that does not parse is procedural code as far as this module can tell.
   * A refusal inside is this statement's. State the text leaves (a session SET, a
   * temporary table, …) makes this session sticky when it `runsNow`; a body that leaves
   * some is refused while variables are pinned, since at its call, later, nothing in the
   * calling statement's text would make that client sticky.
   */
  private sqlText(text: string, where: string, what: string, runsNow: boolean): void {
    const other = nonStandardStringsReading(text);
    for (const reading of other === null ? [text] : [text, other]) {
      const stmts = this.env.parse(reading);
      if (stmts === null) {
        // Judged as unparsed text is (classify.ts): by what it names, refused while pinned,
        // else, when it runs now, sticky with the connection closed.
        if (this.refuseByText(reading, `${where} (text that is not parsed here)`)) return;
        if (this.refuseProcedural(`${what} (a SQL text that is not parsed here)`)) return;
        if (runsNow) this.stickCall(UNPARSED);
        continue;
      }
      const inner = inspect(stmts, this.env, false);
      if (inner.refuse !== null) {
        this.refuse ??= Object.freeze({ ...inner.refuse, detail: `${where}: ${inner.refuse.detail}` });
        return;
      }
      if (inner.sticky === null) continue;
      if (runsNow) {
        this.stickCall(inner.sticky);
        continue;
      }
      const first = this.pins.first;
      if (first === null) continue;
      this.refuseWith(first, pinnedDetail(`${what} whose body leaves session state (${inner.sticky})`, first, 'could change', ' (at its call nothing would keep that state from the next client)'));
      return;
    }
  }

  /** Procedural code judged by what its text names (lexical.ts unanalysedRefusal); returns whether it refused. */
  private refuseByText(body: string, what: string): boolean {
    const r = unanalysedRefusal(body, what);
    if (r !== null) this.refuse ??= r;
    return r !== null;
  }
}

/** Node types that libpg-query prints without a wrapper when a field has that exact type. */
function bareType(o: Obj): string | null {
  if (typeof o.kind === 'string' && o.kind.startsWith('VAR_')) return 'VariableSetStmt'; // AlterRoleSetStmt.setstmt, ...
  if (Array.isArray(o.funcname) && 'funcformat' in o) return 'FuncCall'; // CallStmt.funccall
  if (typeof o.relname === 'string' && 'relpersistence' in o) return 'RangeVar'; // relation, into.rel, ...
  return null;
}

function setForm(kind: string, local: boolean): [string, Effect] {
  const set = local ? 'SET LOCAL' : 'SET';
  switch (kind) {
    case 'VAR_SET_DEFAULT':
      return [`${set} ... TO DEFAULT`, 'would reset'];
    case 'VAR_SET_CURRENT':
      return [`${set} ... FROM CURRENT`, 'would change'];
    case 'VAR_RESET':
      return ['RESET', 'would reset'];
    default:
      return [set, 'would change'];
  }
}

function tempReason(owner: string): string {
  if (owner === 'CreateSeqStmt') return 'temporary sequence';
  if (owner === 'ViewStmt') return 'temporary view';
  return 'temporary table';
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

/** The last element of a name list (`pg_catalog.set_config` → `set_config`), lower-case. */
function lastName(names: unknown): string {
  if (!Array.isArray(names) || names.length === 0) return '';
  const last = names[names.length - 1] as { String?: { sval?: unknown } };
  return str(last.String?.sval).toLowerCase();
}

/** Argument `index` of a call, or the one passed by `name =>`; undefined when absent. */
function argument(args: readonly unknown[], index: number, name: string): unknown {
  for (const a of args) {
    const named = (a as { NamedArgExpr?: Obj }).NamedArgExpr;
    if (named !== undefined && str(named.name).toLowerCase() === name) return named.arg;
  }
  const positional = args[index] as { NamedArgExpr?: Obj } | undefined;
  if (positional === undefined || positional.NamedArgExpr !== undefined) return undefined;
  // A named argument before this one would have been rejected by PostgreSQL; positional wins.
  return positional;
}

/** A signal's first argument is pg_backend_pid(): the caller's own server process. */
function ownBackend(o: Obj): boolean {
  const first = (Array.isArray(o.args) ? o.args[0] : undefined) as { FuncCall?: Obj } | undefined;
  const call = first?.FuncCall;
  if (call === undefined || (Array.isArray(call.args) && call.args.length > 0)) return false;
  // Only pg_catalog's: an unqualified name finds a same-named function of the client's first
  // when its search_path puts pg_catalog later.
  const parts = Array.isArray(call.funcname) ? call.funcname.map((p) => str((p as { String?: { sval?: unknown } }).String?.sval)) : [];
  return parts.length === 2 && parts[0] === 'pg_catalog' && parts[1] === 'pg_backend_pid';
}

/** The string constants a SET gives (`SET NAMES 'x'`, `SET client_encoding = x, …`). */
function setValues(o: Obj): string[] {
  const args = Array.isArray(o.args) ? (o.args as unknown[]) : [];
  return args.map(stringConst).filter((v): v is string => v !== null);
}

/** The value of a plain string constant node, else null (parameters, casts, expressions). */
function stringConst(node: unknown): string | null {
  const c = (node as { A_Const?: { sval?: { sval?: unknown }; isnull?: unknown } } | undefined)?.A_Const;
  if (c === undefined || c.isnull === true || c.sval === undefined) return null;
  return typeof c.sval.sval === 'string' ? c.sval.sval : ''; // an empty string prints as {}
}

function isTrue(node: unknown): boolean {
  const c = (node as { A_Const?: { boolval?: { boolval?: unknown } } } | undefined)?.A_Const;
  return c?.boolval?.boolval === true;
}

/** The string values of DefElem `name` in a DefElem list (a body is a one- or two-item List). */
function defElemStrings(list: unknown, name: string): string[] {
  if (!Array.isArray(list)) return [];
  const out: string[] = [];
  for (const item of list) {
    const d = (item as { DefElem?: Obj }).DefElem;
    if (d === undefined || d.defname !== name) continue;
    collectStrings(d.arg, out);
  }
  return out;
}

function collectStrings(node: unknown, out: string[]): void {
  const n = node as { String?: { sval?: unknown }; List?: { items?: unknown } } | undefined;
  if (n?.String !== undefined) out.push(str(n.String.sval));
  else if (n?.List !== undefined && Array.isArray(n.List.items)) for (const i of n.List.items) collectStrings(i, out);
}
