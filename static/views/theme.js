// The theme button: auto (the system's light or dark) -> dark -> light -> auto.
// The choice is html[data-theme] (app.css) and is kept in localStorage.

import { byTestId } from "./dom.js";

const KEY = "peerlink-theme";
const NEXT = { auto: "dark", dark: "light", light: "auto" };

export function createThemeView(root = document, storage = window.localStorage) {
  const button = byTestId("theme-toggle", root);
  let theme = NEXT[storage.getItem(KEY)] ? storage.getItem(KEY) : "auto";
  const apply = () => {
    if (theme === "auto") delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = theme;
    button.textContent = `Theme: ${theme}`;
    button.title = "Switch between the system's theme, dark and light";
  };
  button.addEventListener("click", () => {
    theme = NEXT[theme];
    storage.setItem(KEY, theme);
    apply();
  });
  apply();
  return { render() {} };
}
