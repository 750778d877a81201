// What both demo pages share. Query parameters: token (the user's JWT), license (licensegate's
// license API origin, default: this host on port 8080), content (default: demo), manifest.
'use strict';

const params = new URLSearchParams(location.search);
const licenseOrigin = params.get('license') || `${location.protocol}//${location.hostname}:8080`;
const content = params.get('content') || 'demo';
const token = params.get('token');
const licenseUrl = `${licenseOrigin}/v1/license/clearkey?content=${encodeURIComponent(content)}`;

// What the end-to-end test reads; the page shows the same.
window.demo = { license: null, error: null, playing: false };

const show = (id, text, kind) => {
  const element = document.getElementById(id);
  element.textContent = text;
  element.className = kind || '';
};
