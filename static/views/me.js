// The header: my name, id, fingerprint, public address, NAT type, port mapping and server state.

import { byTestId, changed } from "./dom.js";

export function createMeView(root = document) {
  const el = {
    name: byTestId("my-name", root),
    id: byTestId("my-id", root),
    fingerprint: byTestId("my-fingerprint", root),
    address: byTestId("my-address", root),
    nat: byTestId("my-nat", root),
    portMapping: byTestId("my-port-mapping", root),
    portMappingField: byTestId("my-port-mapping-field", root),
    serverStatus: byTestId("server-status", root),
    serverDot: byTestId("server-dot", root),
  };
  const memo = {};

  function render(state) {
    const me = state.me;
    if (!me || !changed(memo, [me])) return;
    el.name.textContent = me.name || "(no name)";
    el.id.textContent = me.id === null || me.id === undefined ? "?" : String(me.id);
    el.fingerprint.textContent = me.fingerprint || "";
    el.address.textContent = me.public_address || "unknown yet";
    const nat = me.nat || {};
    const known = nat.type && nat.type !== "unknown";
    el.nat.textContent = known ? nat.type : (nat.note ? "unknown" : "not known yet");
    el.nat.title = known
      ? `mapping ${nat.mapping}, filtering ${nat.filtering}`
      : (nat.note || "asked of the rendezvous server after registering");
    // port_mapping: the address our router forwards to us (PCP, NAT-PMP), or null.
    const mapping = me.port_mapping;
    el.portMappingField.hidden = !mapping;
    el.portMapping.textContent = mapping ? `port mapped by router: ${mapping.external}` : "";
    el.portMapping.title = mapping
      ? `${mapping.protocol}, renewed before ${new Date(mapping.expires * 1000).toLocaleString()}`
      : "";
    // server_state: "connecting" until the server answers, "unreachable"
    // once it has been silent ~3 s, "registered" (older peers: registered only).
    const serverState = me.server_state || (me.registered ? "registered" : "connecting");
    const server = me.server || "?";
    el.serverStatus.textContent = {
      registered: `registered with ${server}`,
      unreachable: `cannot reach the server ${server} (still trying)`,
    }[serverState] || "connecting to the server…";
    el.serverDot.dataset.state = { registered: "ok", unreachable: "down" }[serverState] || "connecting";
    const at = me.server_address && me.server_address !== server ? ` at ${me.server_address}` : "";
    el.serverStatus.title = `rendezvous server ${server}${at}`;
    // The tab title (with the unread count) is views/notifications.js's.
  }

  return { render };
}
