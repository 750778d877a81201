// The demo page with dash.js, the DASH-IF reference player: plays the ClearKey demo stream with
// licensegate as license server (page.js reads the query parameters).
'use strict';

const manifest = params.get('manifest') || 'media/manifest-dashjs.mpd';

show('server', licenseUrl);
const video = document.getElementById('video');
const player = dashjs.MediaPlayer().create();
// dash.js sends the license request with credentials because it carries an Authorization
// header: the browser then needs Access-Control-Allow-Credentials on every answer.
const clearkey = { serverURL: licenseUrl };
if (token) {
  clearkey.httpRequestHeaders = { Authorization: `Bearer ${token}` };
}
player.setProtectionData({ 'org.w3.clearkey': clearkey });
player.registerLicenseResponseFilter((response) => {
  window.demo.license = { status: 200 };
  show('license', 'HTTP 200', 'ok');
  return Promise.resolve();
});
player.on(dashjs.MediaPlayer.events.ERROR, (event) => report(event.error));
video.addEventListener('playing', () => {
  window.demo.playing = true;
  show('playback', 'playing', 'ok');
});
player.initialize(video, manifest, true);

// A refused license arrives as an error carrying the XHR's status and answer (for ClearKey
// dash.js reads it as JSON: licensegate's problem). A status of 0 is an answer the browser hid
// from the page (CORS).
function report(error) {
  const data = (error && error.data) || {};
  let answer = data.serverResponse;
  if (answer instanceof ArrayBuffer) {
    try {
      answer = JSON.parse(new TextDecoder().decode(answer));
    } catch (_) {
      answer = null;
    }
  }
  const message = String((error && error.message) || '');
  const status = message.match(/\((\d{1,3})\)/);
  window.demo.error = {
    code: error && error.code,
    status: data.responseCode || (status ? Number(status[1]) : null),
    problem: (answer && answer.code) || null,
    message,
  };
  show('license', message, 'error');
  show('playback', `dash.js error ${error && error.code}`, 'error');
}
