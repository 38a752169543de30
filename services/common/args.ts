// Command-line options of the service processes: --name value pairs and
// --flag booleans, checked against what each process accepts.

export type OptionKind = 'string' | 'int' | 'number' | 'bool' | 'list' | 'multi'; // list: a,b,c; multi: repeatable

export interface OptionSpec {
  kind: OptionKind;
  default?: string | number | boolean | string[];
  help: string;
}

export type Options = Record<string, string | number | boolean | string[] | undefined>;

export class UsageError extends Error {}

export function parseOptions(argv: readonly string[], spec: Record<string, OptionSpec>): Options {
  const out: Options = {};
  for (const [k, s] of Object.entries(spec)) out[k] = s.default;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new UsageError(`unexpected argument ${a}`);
    const [name, inline] = a.slice(2).split('=', 2) as [string, string | undefined];
    const s = spec[name];
    if (!s) throw new UsageError(`unknown option --${name}`);
    if (s.kind === 'bool') {
      out[name] = inline === undefined ? true : inline !== 'false';
      continue;
    }
    const v = inline ?? argv[++i];
    if (v === undefined) throw new UsageError(`--${name} needs a value`);
    if (s.kind === 'int' || s.kind === 'number') {
      const x = Number(v);
      if (!Number.isFinite(x) || (s.kind === 'int' && !Number.isInteger(x))) throw new UsageError(`--${name} must be ${s.kind === 'int' ? 'an integer' : 'a number'}, got ${v}`);
      out[name] = x;
    } else if (s.kind === 'multi') {
      out[name] = [...((out[name] as string[] | undefined) ?? []), v];
    } else if (s.kind === 'list') {
      out[name] = v.split(',').map((x) => x.trim()).filter(Boolean);
    } else out[name] = v;
  }
  return out;
}

export function usage(title: string, spec: Record<string, OptionSpec>): string {
  const lines = Object.entries(spec).map(([k, s]) => `  --${k}${s.kind === 'bool' ? '' : ' ' + s.kind.toUpperCase()}`.padEnd(32) + s.help + (s.default !== undefined && s.default !== false ? ` (default ${s.default})` : ''));
  return `${title}\n\noptions:\n${lines.join('\n')}\n`;
}

/** Options of every service process: how the services reach each other (services/common/credentials.ts). */
export const TLS_OPTIONS: Record<string, OptionSpec> = {
  'tls-dir': { kind: 'string', help: "mutual TLS between the services: a directory with ca.pem, cert.pem and key.pem (or a Kubernetes TLS secret's ca.crt, tls.crt, tls.key); npm start makes a throwaway one" },
  plaintext: { kind: 'bool', default: false, help: 'no TLS between the services: only with this flag (a trusted network, e.g. loopback in tests)' },
};
