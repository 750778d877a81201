// The demo page: plays the ClearKey demo stream with Shaka Player and licensegate as license
// server (page.js reads the query parameters).
'use strict';

const manifest = params.get('manifest') || 'media/manifest.mpd';

async function main() {
  show('server', licenseUrl);
  shaka.polyfill.installAll();
  const video = document.getElementById('video');
  const player = new shaka.Player();
  await player.attach(video);
  player.configure({ drm: { servers: { 'org.w3.clearkey': licenseUrl } } });

  const networking = player.getNetworkingEngine();
  networking.registerRequestFilter((type, request) => {
    if (type === shaka.net.NetworkingEngine.RequestType.LICENSE && token) {
      request.headers['Authorization'] = `Bearer ${token}`;
    }
  });
  networking.registerResponseFilter((type, response) => {
    if (type !== shaka.net.NetworkingEngine.RequestType.LICENSE) return;
    window.demo.license = { status: response.status, ms: response.timeMs };
    show('license', `HTTP ${response.status}`, 'ok');
    show('latency', `${Math.round(response.timeMs)} ms`);
  });

  player.addEventListener('error', (event) => report(event.detail));
  video.addEventListener('playing', () => {
    window.demo.playing = true;
    show('playback', 'playing', 'ok');
  });
  try {
    await player.load(manifest);
  } catch (error) {
    report(error);
  }
}

// A refused license arrives as LICENSE_REQUEST_FAILED wrapping BAD_HTTP_STATUS, which carries
// the status and body: licensegate's problem JSON.
function report(error) {
  const entry = { code: error.code, status: null, problem: null };
  const cause = error.code === shaka.util.Error.Code.LICENSE_REQUEST_FAILED ? error.data[0] : error;
  if (cause && cause.code === shaka.util.Error.Code.BAD_HTTP_STATUS) {
    entry.status = cause.data[1];
    try {
      const body = typeof cause.data[2] === 'string'
        ? cause.data[2]
        : new TextDecoder().decode(cause.data[2]);
      entry.problem = JSON.parse(body).code;
    } catch (_) {
      entry.problem = null;
    }
    show('license', `HTTP ${entry.status} ${entry.problem || ''}`, 'error');
  }
  window.demo.error = entry;
  show('playback', `Shaka error ${error.code}`, 'error');
}

main();
