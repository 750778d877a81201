// What `podman kube play` gets from a kustomization of deploy/kubernetes: its ConfigMaps and
// its Deployment, overlays' patches merged in (kustomize's strategic merge, for maps: the
// subset these overlays use). podman 4.3 publishes every container port on the host and runs
// each replica as a pod of its own, so the Deployment runs one replica with its ports on the
// host ports given. Writes the play file and each ConfigMap's files (for `licensegate check`)
// under OUT, and prints what the test needs of the Deployment as JSON.
//   node play.mjs KUSTOMIZATION_DIR LICENSE_HOST_PORT ADMIN_HOST_PORT OUT
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';

const [dir, licensePort, adminPort, out] = process.argv.slice(2);

const documents = (file) => parseAllDocuments(readFileSync(file, 'utf8'))
  .map((document) => document.toJS()).filter(Boolean);

const merge = (target, patch) => {
  for (const [key, value] of Object.entries(patch)) {
    const plain = (v) => v && typeof v === 'object' && !Array.isArray(v);
    target[key] = plain(value) && plain(target[key]) ? merge(target[key], value) : value;
  }
  return target;
};

function build(directory) {
  const [kustomization] = documents(join(directory, 'kustomization.yaml'));
  const resources = [];
  for (const entry of kustomization.resources || []) {
    const path = join(directory, entry);
    resources.push(...(entry.endsWith('.yaml') ? documents(path) : build(path)));
  }
  for (const { path } of kustomization.patches || []) {
    for (const patch of documents(join(directory, path))) {
      const target = resources.find((r) => r.kind === patch.kind && r.metadata.name === patch.metadata.name);
      if (!target) throw new Error(`${path}: no ${patch.kind} ${patch.metadata.name} to patch`);
      merge(target, patch);
    }
  }
  return resources;
}

const resources = build(dir);
const configMaps = resources.filter((r) => r.kind === 'ConfigMap');
const deployment = resources.find((r) => r.kind === 'Deployment');
deployment.spec.replicas = 1;
const container = deployment.spec.template.spec.containers[0];
const hostPorts = { license: Number(licensePort), admin: Number(adminPort) };
for (const port of container.ports) port.hostPort = hostPorts[port.name];

mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'play.yaml'), [...configMaps, deployment].map((r) => stringify(r)).join('---\n'));
for (const configMap of configMaps) {
  const files = join(out, configMap.metadata.name);
  mkdirSync(files, { recursive: true });
  for (const [name, text] of Object.entries(configMap.data)) writeFileSync(join(files, name), text);
}
const readiness = container.readinessProbe.httpGet;
const probed = container.ports.find((p) => p.containerPort === readiness.port || p.name === readiness.port);
console.log(JSON.stringify({
  name: deployment.metadata.name,
  container: container.name,
  image: container.image,
  readinessPath: readiness.path,
  readinessHostPort: probed.hostPort,
  terminationGracePeriodSeconds: deployment.spec.template.spec.terminationGracePeriodSeconds,
  runAsUser: deployment.spec.template.spec.securityContext.runAsUser,
}));
