// On/off settings kept in this browser's localStorage (the sound, desktop
// notifications).  Storage may be missing or refused: a switch then reads off
// and holds only until the page is closed.

export function switchedOn(key) {
  try {
    return localStorage.getItem(key) === "on";
  } catch (_) {
    return false;
  }
}

export function rememberSwitch(key, on) {
  try {
    localStorage.setItem(key, on ? "on" : "off");
  } catch (_) {
    // no storage: the switch holds until the page is closed
  }
}
