"""Old's queue found on new, queued or delivered, so no message is lost unnoticed in the move."""

from __future__ import annotations


def describe_message(m: dict) -> str:
    mid = f", {m['message_id']}" if m.get("message_id") else ""
    return f"{m['id']} (from {m['sender'] or '<>'}{mid})"


def match_queue(
    recorded: list[dict], queued: list[dict], deliveries: dict | None
) -> tuple[list[dict], list[dict], list[tuple[dict, str]], list[dict]]:
    """Old's recorded messages found on new: (queued, delivered, returned with status,
    missing). Queued: same Message-ID, or the same sender, size, arrival time and
    recipients; delivered: Postfix on new logged a message of that sender and size
    whose every recipient got a final status, "sent" for all (else returned)."""
    pool = list(queued)
    found_queued, delivered, returned, missing = [], [], [], []
    log_from = [list(x) for x in (deliveries or {}).get("from", [])]
    log_to: dict[str, dict[str, str]] = {}
    for qid, rcpt, status in (deliveries or {}).get("to", []):
        if status in ("sent", "bounced", "expired"):
            log_to.setdefault(qid, {})[rcpt.lower()] = status
    for m in recorded:
        twin = next((n for n in pool if _same_message(m, n)), None)
        if twin:
            pool.remove(twin)
            found_queued.append(m)
            continue
        done = None
        for entry in log_from:
            qid, sender, size = entry
            statuses = log_to.get(qid, {})
            if (sender, size) == (m["sender"], m["size"]) and all(
                r.lower() in statuses for r in m["recipients"]
            ):
                done = entry, {statuses[r.lower()] for r in m["recipients"]}
                break
        if done is None:
            missing.append(m)
            continue
        log_from.remove(done[0])
        if done[1] == {"sent"}:
            delivered.append(m)
        else:
            returned.append((m, "/".join(sorted(done[1] - {"sent"}))))
    return found_queued, delivered, returned, missing


def _same_message(a: dict, b: dict) -> bool:
    if a.get("message_id") and b.get("message_id"):
        return a["message_id"] == b["message_id"] and a["sender"] == b["sender"]
    keys = ("sender", "size", "arrival", "recipients")
    return all(a.get(k) == b.get(k) for k in keys)
