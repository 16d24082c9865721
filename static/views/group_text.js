// A group's membership change (the "change" of a websocket "group" event) as
// the line the conversation shows.  Pure: no DOM (tests/js/group_state.test.mjs).

/** A membership change as a sentence: "alice added bob and carol". */
export function changeText(change, nameOf) {
  const who = nameOf(change.by);
  const names = (ids) => {
    const all = ids.map(nameOf);
    return all.length <= 1 ? all.join("") : `${all.slice(0, -1).join(", ")} and ${all[all.length - 1]}`;
  };
  const texts = {
    create: () => `${who} created the group “${change.name ?? ""}”`,
    add: () => `${who} added ${names(change.members)}`,
    remove: () => `${who} removed ${nameOf(change.target)}`,
    promote: () => `${who} made ${nameOf(change.target)} an admin`,
    leave: () => `${who} left`,
    rename: () => `${who} renamed the group to “${change.name ?? ""}”`,
  };
  // A kind this page does not know (a newer peer) still reads as something.
  const sentence = Object.hasOwn(texts, change.kind) ? texts[change.kind]() : `${who} changed the group (${change.kind})`;
  return change.applied ? sentence : `${sentence} (did not apply: it conflicted with another change)`;
}
