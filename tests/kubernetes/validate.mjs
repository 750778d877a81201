// Validates every resource under deploy/kubernetes against the Kubernetes schemas (the npm
// package kubernetes-models) and the Prometheus Operator's (@kubernetes-models/prometheus-operator),
// offline, and checks each kustomization's files exist. The packages' validators check values
// but let unknown fields through, as a misspelt field is: TypeScript then checks every
// resource against the packages' types, which refuse fields they do not name. Prints one line
// per resource; exits 1 if any is invalid.
//   node validate.mjs DIR
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, existsSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { join, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));

const root = process.argv[2];
const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (name.endsWith('.yaml')) files.push(path);
  }
};
walk(root);

// A resource's module: core types by group and version, the Operator's ServiceMonitor apart.
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  return group === 'monitoring.coreos.com'
    ? `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`
    : `kubernetes-models/${group ? `${group}/` : ''}${version}/${kind}`;
}

async function model(apiVersion, kind) {
  const module = modulePath(apiVersion, kind);
  try {
    return (await import(module))[kind];
  } catch (error) {
    throw new Error(`no schema for ${apiVersion} ${kind} (${module}): ${error.message}`);
  }
}

let failed = false;
// One line of TypeScript per resource, typed by its interface; `typed[i]` names line i + 1.
const typescript = [];
const all = [];
const typed = [];
for (const file of files) {
  const name = relative(root, file);
  for (const document of parseAllDocuments(readFileSync(file, 'utf8'))) {
    if (document.errors.length) {
      console.log(`FAILED: ${name}: ${document.errors[0].message}`);
      failed = true;
      continue;
    }
    const resource = document.toJS();
    if (!resource) continue;
    if (resource.kind === 'Kustomization') {
      for (const entry of [...(resource.resources || []), ...(resource.patches || []).map((p) => p.path)]) {
        if (!existsSync(join(dirname(file), entry))) {
          console.log(`FAILED: ${name}: ${entry} does not exist`);
          failed = true;
        }
      }
      console.log(`ok: ${name}: Kustomization`);
      continue;
    }
    try {
      const Model = await model(resource.apiVersion, resource.kind);
      new Model(resource).validate();
      const type = `import("${modulePath(resource.apiVersion, resource.kind)}").I${resource.kind}`;
      typescript.push(`export const r${typed.length}: ${type} = ${JSON.stringify(resource)};`);
      typed.push(`${name}: ${resource.kind} ${resource.metadata.name}`);
      all.push(resource);
      console.log(`ok: ${name}: ${resource.kind} ${resource.metadata.name} (values)`);
    } catch (error) {
      console.log(`FAILED: ${name}: ${resource.kind} ${resource.metadata?.name}: ${error.message}`);
      failed = true;
    }
  }
}
// What the schemas cannot see: the resources naming each other.
const subset = (selector, labels) => Object.entries(selector || {}).every(([k, v]) => labels?.[k] === v);
const named = (kind, name) => all.some((r) => r.kind === kind && r.metadata.name === name);
const references = [];
for (const deployment of all.filter((r) => r.kind === 'Deployment')) {
  const pod = deployment.spec.template;
  const labels = pod.metadata.labels;
  references.push([`Deployment ${deployment.metadata.name}: its selector matches its pods`,
    subset(deployment.spec.selector.matchLabels, labels)]);
  for (const r of all) {
    const selector = { Service: r.spec?.selector, PodDisruptionBudget: r.spec?.selector?.matchLabels,
      NetworkPolicy: r.spec?.podSelector?.matchLabels }[r.kind];
    if (selector) references.push([`${r.kind} ${r.metadata.name}: selects the Deployment's pods`, subset(selector, labels)]);
  }
  for (const container of pod.spec.containers) {
    for (const from of container.envFrom || []) {
      if (from.secretRef) references.push([`Deployment: Secret ${from.secretRef.name} exists`, named('Secret', from.secretRef.name)]);
    }
  }
  for (const volume of pod.spec.volumes || []) {
    if (volume.configMap) references.push([`Deployment: ConfigMap ${volume.configMap.name} exists`, named('ConfigMap', volume.configMap.name)]);
  }
}
for (const hpa of all.filter((r) => r.kind === 'HorizontalPodAutoscaler')) {
  references.push([`HorizontalPodAutoscaler ${hpa.metadata.name}: scales an existing Deployment`,
    named(hpa.spec.scaleTargetRef.kind, hpa.spec.scaleTargetRef.name)]);
}
for (const monitor of all.filter((r) => r.kind === 'ServiceMonitor')) {
  const services = all.filter((r) => r.kind === 'Service' && subset(monitor.spec.selector.matchLabels, r.metadata.labels));
  references.push([`ServiceMonitor ${monitor.metadata.name}: selects one Service, on a port it has`,
    services.length === 1 && monitor.spec.endpoints.every((e) => services[0].spec.ports.some((p) => p.name === e.port))]);
}
for (const [what, holds] of references) {
  console.log(`${holds ? 'ok' : 'FAILED'}: ${what}`);
  failed ||= !holds;
}

const source = join(here, 'resources.generated.ts');
writeFileSync(source, typescript.join('\n') + '\n');
try {
  execFileSync(join(here, 'node_modules/.bin/tsc'), ['--noEmit', '--strict', '--module', 'nodenext',
    '--moduleResolution', 'nodenext', '--skipLibCheck', source], { encoding: 'utf8' });
  console.log(`ok: ${typed.length} resources name only fields their types have`);
} catch (error) {
  for (const line of (error.stdout || '').split('\n').filter(Boolean)) {
    const at = /\((\d+),\d+\)/.exec(line);
    console.log(`FAILED: ${at ? typed[Number(at[1]) - 1] : ''}: ${line.replace(/^.*?error /, '')}`);
  }
  failed = true;
} finally {
  rmSync(source, { force: true });
}
process.exit(failed ? 1 : 0);
