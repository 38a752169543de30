// Offline validation of Kubernetes objects against the API's schemas, from
// the kubernetes-models package (JSON-schema validators generated from the
// Kubernetes OpenAPI spec: types, required fields, formats such as
// quantities). The OpenAPI schemas allow unknown fields, which the API
// server's strict field validation would refuse, so a second pass walks the
// object along the package's type declarations (.d.ts: one interface per
// schema, one quoted property per field) and reports every field the API
// does not have: a typo such as `readinesProbe` fails here as it would on
// `kubectl apply --validate=strict`.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const MODELS = dirname(require.resolve('kubernetes-models/package.json'));

type Obj = Record<string, unknown>;

interface Validatable {
  validate(): void;
}
type ModelCtor = new (data: Obj) => Validatable;

/** The model module for an apiVersion: "v1" → kubernetes-models/v1, "apps/v1" → kubernetes-models/apps/v1. */
function modelFile(apiVersion: string, kind: string): string {
  return join(MODELS, ...apiVersion.split('/'), kind);
}

/** Every problem with one object ([] when it is valid). */
export function validateObject(o: Obj): string[] {
  const apiVersion = String(o.apiVersion), kind = String(o.kind);
  const where = `${apiVersion} ${kind} ${(o.metadata as Obj | undefined)?.name ?? '?'}`;
  const file = modelFile(apiVersion, kind);
  if (!existsSync(`${file}.js`)) return [`${where}: no schema for this apiVersion and kind`];
  const Ctor = (require(`${file}.js`) as Record<string, ModelCtor>)[kind];
  const errors: string[] = [];
  try {
    new Ctor(o).validate();
  } catch (e) {
    errors.push(`${where}: ${(e as Error).message}`);
  }
  for (const f of unknownFields(o, `${file}.d.ts`, '')) errors.push(`${where}: unknown field ${f}`);
  return errors;
}

// --- field names from the .d.ts declarations --------------------------------

interface Shape {
  props: Map<string, string>; // field → its declared type
  file: string;
}

const shapes = new Map<string, Shape | null>();

/** The first exported interface of a declaration file: its fields and types. */
function shapeOf(dts: string): Shape | null {
  if (shapes.has(dts)) return shapes.get(dts)!;
  let shape: Shape | null = null;
  if (existsSync(dts)) {
    const src = readFileSync(dts, 'utf8');
    const m = /export interface \w+(?: extends [\w, ]+)? \{([\s\S]*?)\n\}/.exec(src);
    if (m) {
      const props = new Map<string, string>();
      // `"name"?: Type;` on one line, or a map type `{ [key: string]: Type; }` over three.
      for (const p of m[1].matchAll(/^\s*"([^"]+)"\??: (\{[^}]*\}|[^\n]+?);$/gm)) props.set(p[1], p[2].replace(/\s+/g, ' '));
      if (/extends TypeMeta/.test(src)) {
        props.set('apiVersion', 'string');
        props.set('kind', 'string');
      }
      shape = { props, file: dts };
    }
  }
  shapes.set(dts, shape);
  return shape;
}

/** Where a type named in `fromDts` is declared (its import line). */
function declarationOf(type: string, fromDts: string): string | null {
  const src = readFileSync(fromDts, 'utf8');
  const m = new RegExp(`import \\{ ${type} \\} from "([^"]+)"`).exec(src);
  if (!m) return null;
  const spec = m[1];
  if (spec.startsWith('.')) return join(dirname(fromDts), `${spec}.d.ts`);
  try {
    return require.resolve(spec, { paths: [MODELS] }).replace(/\.c?js$/, '.d.ts');
  } catch {
    return null;
  }
}

function unknownFields(value: unknown, dts: string, path: string): string[] {
  const shape = shapeOf(dts);
  if (!shape || typeof value !== 'object' || value === null || Array.isArray(value)) return [];
  const out: string[] = [];
  for (const [k, v] of Object.entries(value as Obj)) {
    const type = shape.props.get(k);
    if (type === undefined) {
      out.push(`${path}.${k}`.replace(/^\./, ''));
      continue;
    }
    out.push(...checkTyped(v, type, shape.file, `${path}.${k}`));
  }
  return out;
}

function checkTyped(v: unknown, type: string, fromDts: string, path: string): string[] {
  const arr = /^Array<(.+)>$/.exec(type);
  if (arr) return Array.isArray(v) ? v.flatMap((x, i) => checkTyped(x, arr[1], fromDts, `${path}[${i}]`)) : [];
  const map = /^\{\s*\[key: string\]: (.+?);?\s*\}$/.exec(type);
  if (map) return typeof v === 'object' && v !== null ? Object.entries(v as Obj).flatMap(([k, x]) => checkTyped(x, map[1], fromDts, `${path}.${k}`)) : [];
  if (/^I\w+$/.test(type)) {
    const decl = declarationOf(type, fromDts);
    return decl ? unknownFields(v, decl, path) : [];
  }
  return [];
}
