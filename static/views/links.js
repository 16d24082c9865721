// Message text with its http(s) addresses as links, built with DOM calls:
// the text is split into text nodes and <a> elements, never parsed as HTML.
// Only http: and https: become links (a "javascript:" or "data:" address
// stays text), each opens in a new tab without the page as its opener, and
// the CSP is unchanged (links are navigation, not loads).

const URL_CANDIDATE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?'"\]}>]+$/; // sentence punctuation after an address is not part of it

/** Append `text` to `parent`, with each http(s) address as a link. */
export function appendWithLinks(parent, text) {
  let from = 0;
  for (const match of text.matchAll(URL_CANDIDATE)) {
    const address = trimmed(match[0]);
    const href = httpHref(address);
    if (href === null) continue;
    if (match.index > from) parent.append(document.createTextNode(text.slice(from, match.index)));
    const link = document.createElement("a");
    link.href = href;
    link.textContent = address;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.dataset.testid = "message-link";
    parent.append(link);
    from = match.index + address.length;
  }
  if (from < text.length) parent.append(document.createTextNode(text.slice(from)));
}

// "(see https://x.org/a)": the ")" closes the sentence unless the address opened one.
function trimmed(candidate) {
  let address = candidate.replace(TRAILING, "");
  while (address.endsWith(")") && count(address, "(") < count(address, ")")) {
    address = address.slice(0, -1).replace(TRAILING, "");
  }
  return address;
}

function count(text, char) {
  return text.split(char).length - 1;
}

function httpHref(address) {
  try {
    const url = new URL(address);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch (_) {
    return null;
  }
}
