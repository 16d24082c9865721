// Small DOM helpers shared by the views.
//
// Everything a peer controls (names, message texts, fingerprints, addresses)
// reaches the DOM through textContent only; no module of this page uses
// innerHTML or any other way of parsing strings as HTML.

export function byTestId(id, root = document) {
  return root.querySelector(`[data-testid="${id}"]`);
}

/** A new element with an optional class and text (always as text, never HTML). */
export function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function connectionText(connection) {
  if (!connection) return { state: "none", label: "not connected", address: "" };
  return { state: connection.state, label: connection.state, address: connection.address || "" };
}

/**
 * Remembers the inputs of the last render, so a view can skip work when the
 * parts of the state it shows are the same objects as last time.
 */
export function changed(memo, inputs) {
  const same = memo.inputs !== undefined && inputs.length === memo.inputs.length
    && inputs.every((value, index) => value === memo.inputs[index]);
  memo.inputs = inputs;
  return !same;
}

/** Moves what the list entry ``item`` holds into one button inside it (a
 * list of buttons, as screen readers expect) marked current when chosen. */
export function asListButton(item, testId, current) {
  const button = make("button", "peer-button");
  button.type = "button";
  button.dataset.testid = testId;
  if (current) button.setAttribute("aria-current", "true");
  button.append(...item.childNodes);
  item.append(button);
  return item;
}
