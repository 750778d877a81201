// Opens the demo page in Debian's Chromium and reports what the player did, as one JSON line:
// {currentTime, decodedFrames, license, error, playing}. Usage:
//   node play.mjs <page url> <seconds to wait> [screenshot.png]
import { launch } from './browser.mjs';

const [url, seconds = '15', screenshot] = process.argv.slice(2);
const browser = await launch(['--autoplay-policy=no-user-gesture-required']);
try {
  const page = await browser.newPage();
  await page.goto(url);
  const deadline = Date.now() + Number(seconds) * 1000;
  let state;
  do {
    await page.waitForTimeout(250);
    state = await page.evaluate(() => {
      const video = document.getElementById('video');
      const quality = video.getVideoPlaybackQuality();
      return {
        currentTime: video.currentTime,
        decodedFrames: quality.totalVideoFrames,
        ...window.demo,
      };
    });
  } while (Date.now() < deadline && state.currentTime < 3 && !state.error);
  if (screenshot) {
    await page.screenshot({ path: screenshot });
  }
  console.log(JSON.stringify(state));
} finally {
  await browser.close();
}
