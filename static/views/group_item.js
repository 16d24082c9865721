// A group's entry in the sidebar list, beside the people (peers.js orders
// both by their latest activity): a "group" marker, the name, the member
// count, an unread badge and the start of the latest message.

import { displayName, findPeer } from "../state.js";
import { isReadingGroup, lastGroupMessage } from "../group_state.js";
import { asListButton, make } from "./dom.js";

export function groupItem(state, group) {
  const item = make("li", "peer group-item");
  item.dataset.testid = "group-item";
  item.dataset.groupId = group.id;
  if (group.id === state.selectedGroup) item.classList.add("selected");
  if (!group.member) item.classList.add("group-gone");

  const top = make("div", "peer-top");
  top.append(make("span", "group-tag", "group"));
  const name = make("span", "peer-name", group.name);
  name.dataset.testid = "group-item-name";
  top.append(name);
  const unread = state.groupUnread.get(group.id) ?? 0;
  if (unread > 0 && !isReadingGroup(state, group.id)) {
    const badge = make("span", "badge", unread > 99 ? "99+" : unread);
    badge.dataset.testid = "group-unread-badge";
    badge.title = `${unread} unread`;
    top.append(badge);
  }
  item.append(top);

  const line = make("div", "peer-conn");
  line.append(make("span", "", group.member ? `${group.members.length} members` : "you left or were removed"));
  item.append(line);

  const last = lastGroupMessage(state, group.id);
  if (last) {
    const me = state.me ? state.me.id : null;
    const who = last.from === me ? "you" : displayName(findPeer(state, last.from)) || `#${last.from}`;
    const preview = make("div", "peer-preview", `${who}: ${last.text.slice(0, 120)}`);
    preview.dataset.testid = "group-preview";
    item.append(preview);
  }

  return asListButton(item, "group-button", group.id === state.selectedGroup);
}
