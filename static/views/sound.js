// An optional sound for a message the user is not reading: a short two-note
// chime made with WebAudio (no sound file to fetch), off until the user ticks
// "Sound for new messages" in the sidebar.  The choice is this browser's, so
// it is kept in localStorage like the desktop notifications' switch.
//
// A burst rings once (QUIET_MS).  Browsers start audio only after a user
// gesture: ticking the box is one (and plays the chime as a sample); after a
// reload the audio context is resumed at the first click or key press.

import { byTestId } from "./dom.js";
import { rememberSwitch, switchedOn } from "./switches.js";

const SWITCH_KEY = "peerlink:sound";
const QUIET_MS = 1000;
const NOTES = [[0, 880], [0.12, 1320]]; // [start in s, frequency in Hz]: A5 then E6
const NOTE_SECONDS = 0.3;
const VOLUME = 0.15;

export function createSoundView(root = document) {
  const toggle = byTestId("sound-toggle", root);
  let on = switchedOn(SWITCH_KEY);
  let context = null;
  let lastRing = -Infinity;
  toggle.checked = on;
  toggle.addEventListener("change", () => {
    on = toggle.checked;
    rememberSwitch(SWITCH_KEY, on);
    if (on) chime();
  });
  const wake = () => {
    if (context !== null && context.state === "suspended") context.resume().catch(() => {});
  };
  root.addEventListener("pointerdown", wake, { capture: true, passive: true });
  root.addEventListener("keydown", wake, { capture: true, passive: true });

  function chime() {
    const AudioContextClass = window.AudioContext || window.webkitAudioContext;
    if (!AudioContextClass) return;
    try {
      context ??= new AudioContextClass();
      const at = context.currentTime + 0.01;
      for (const [offset, frequency] of NOTES) {
        const oscillator = context.createOscillator();
        const gain = context.createGain();
        oscillator.type = "sine";
        oscillator.frequency.value = frequency;
        // A quick rise and an exponential fall: a bell, not a click.
        gain.gain.setValueAtTime(0.0001, at + offset);
        gain.gain.exponentialRampToValueAtTime(VOLUME, at + offset + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, at + offset + NOTE_SECONDS);
        oscillator.connect(gain).connect(context.destination);
        oscillator.start(at + offset);
        oscillator.stop(at + offset + NOTE_SECONDS + 0.02);
      }
    } catch (_) {
      // No audio device or a refused context: the sound is a nicety, stay silent.
    }
  }

  /** A message the user is not reading arrived (main.js decides which). */
  function ring() {
    const now = performance.now();
    if (!on || now - lastRing < QUIET_MS) return;
    lastRing = now;
    chime();
  }

  return { ring };
}
