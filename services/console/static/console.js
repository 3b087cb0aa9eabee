// The console's few behaviours: the operator's live preview and keyboard shortcuts, and the
// dashboard's live figures. Every page works without this file; it only saves clicks and reloads.
"use strict";

(function () {
  const main = document.getElementById("main");
  const csrf = main ? main.dataset.csrf : "";

  // A live stream refused (the session expired): to the sign-in page, as any other page would go.
  function watch(url) {
    const source = new EventSource(url);
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) window.location.assign("/console/signin");
    });
    return source;
  }

  // A part of the page redrawn from the server's rendering (a department's live queue, the
  // dashboard's rankings, the operator's preview) waits while a button is held down on it:
  // replaced between the press and the release, the click would land on nothing. And the link,
  // box or button in focus is in focus again after, so a keyboard user keeps their place.
  let pressed = null;
  const waiting = [];
  document.addEventListener("pointerdown", (e) => { pressed = e.target; });
  const release = () => {
    pressed = null;
    for (const resume of waiting.splice(0)) setTimeout(resume, 0); // once the click is handled
  };
  window.addEventListener("pointerup", release);
  window.addEventListener("pointercancel", release);

  async function unpressed(part) {
    while (pressed instanceof Node && part.contains(pressed)) await new Promise((resume) => waiting.push(resume));
  }

  function twinOf(part, el) {
    if (!(el instanceof HTMLElement) || !part.contains(el)) return null;
    if (el.id) return `#${CSS.escape(el.id)}`;
    if (el instanceof HTMLAnchorElement) return `a[href="${CSS.escape(el.getAttribute("href") || "")}"]`;
    const name = el.getAttribute("name");
    return name ? `[name="${CSS.escape(name)}"][value="${CSS.escape(el.getAttribute("value") || "")}"]` : null;
  }

  function redrawn(part, html) {
    const focused = twinOf(part, document.activeElement);
    part.innerHTML = html;
    const again = focused && part.querySelector(focused);
    if (again instanceof HTMLElement) again.focus();
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf || "", "X-Requested-With": "fetch" },
    });
    if (response.status === 401) {
      window.location.assign("/console/signin");
      return null;
    }
    return response;
  }

  // A list's filters fold away on a phone (the stylesheet's 700 px), so that its first screen shows
  // tickets; the summary says how many are set and opens them. Not one that came back refused: its
  // field has the focus and its reason is to be read. Open on a desktop, and without the script.
  if (window.matchMedia("(max-width: 700px)").matches) {
    for (const box of document.querySelectorAll("details[data-fold-narrow]")) {
      if (!box.querySelector("[aria-invalid=true]")) box.open = false;
    }
  }

  // A field a step cannot go without says so in the server's own words (data-required), maybe only
  // with another field's value (data-required-if="name=value|value": 退单's 说明 when the reason is
  // 诉求分类有误) and maybe of a least length (data-min-chars, counted as the server counts, spaces
  // run together). Checked as the form is sent, before any question is asked: a step confirmed as
  // irreversible is not refused afterwards for a field left empty. The first field at fault takes
  // the focus, described by the reason, as a refusal from the server comes back (the same place,
  // the same id: data-refused-as); the server checks again, and without the script it alone does.
  // A choice of radios (a resident's 满意/不满意) is asked for on its first radio, for the group: its
  // value is the checked one's, and its reason goes under the group's question (its legend).
  const valueOf = (form, name) => {
    const fields = [...form.elements].filter((el) => el.name === name);
    const on = fields.find((el) => !["radio", "checkbox"].includes(el.type) || el.checked);
    return on ? on.value : "";
  };
  const wanted = (form, field) => {
    const [name, values] = (field.dataset.requiredIf || "").split("=");
    if (name && !(values || "").split("|").includes(valueOf(form, name))) return "";
    const value = field.type === "radio" ? valueOf(form, field.name) : field.value;
    const typed = [...value.trim().replace(/\s+/g, " ")];
    return typed.length < Math.max(1, Number(field.dataset.minChars) || 0) ? field.dataset.required : "";
  };
  const flag = (field, words) => {
    const described = (field.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
    const id = field.dataset.refusedAs || `${field.id}-error`;
    const shown = document.getElementById(id);
    if (!words) {
      if (shown) shown.remove();
      field.removeAttribute("aria-invalid");
      const left = described.filter((x) => x !== id);
      if (left.length) field.setAttribute("aria-describedby", left.join(" "));
      else field.removeAttribute("aria-describedby");
      return;
    }
    const reason = shown || document.createElement("p");
    reason.className = "error";
    reason.id = id;
    reason.textContent = words; // read with the field the focus goes to: no live region of its own
    const group = field.type === "radio" ? field.closest("fieldset") : null;
    const legend = group ? group.querySelector("legend") : null;
    if (!shown) (legend || field).insertAdjacentElement("afterend", reason);
    field.setAttribute("aria-invalid", "true");
    if (!described.includes(id)) field.setAttribute("aria-describedby", [...described, id].join(" "));
  };
  const wanting = (form) => {
    let first = null;
    for (const field of form.querySelectorAll("[data-required]")) {
      if (field.disabled) continue;
      const words = wanted(form, field);
      flag(field, words);
      if (words && !first) first = field;
    }
    if (first) first.focus();
    return first !== null;
  };

  // A form that cannot be undone (a return, a resolution, a meeting's decision) asks first, and so
  // does a button that sends its form elsewhere (the operator's urge). Without the script it posts
  // at once, as every form did before.
  document.addEventListener("submit", (e) => {
    const button = e.submitter instanceof HTMLElement ? e.submitter.dataset.confirm : "";
    const form = e.target instanceof HTMLFormElement ? e.target : null;
    if (form && wanting(form)) {
      e.preventDefault();
      return;
    }
    // A choice that needs asking first (a grid worker's "not solved"): the chosen radio says so.
    const choice = form ? form.querySelector("input[type=radio][data-confirm]:checked") : null;
    let question = button || (choice ? choice.dataset.confirm : "") || (form ? form.dataset.confirm : "");
    // The question names what was chosen (a meeting's lead): {name} is the choice's text.
    for (const pick of form ? form.querySelectorAll("select[data-confirm-fills]") : []) {
      const chosen = pick.selectedOptions[0];
      question = question.replace(`{${pick.dataset.confirmFills}}`, chosen && chosen.value ? chosen.text : "所选单位");
    }
    if (question && !window.confirm(question)) e.preventDefault();
  });

  // What the page came back to say: a call accepted, a ticket dispatched, a form refused as a whole
  // (their data-announce, templates/_said.html), a draft restored (tell, below). A live region reads
  // out what changes in it, not what the page was loaded with, so once the page has loaded the
  // words, in the page's order, are put into its empty one (base.html). Each is read once: words
  // the focus reads are not put there too. The focus reads the element it lands on (and what is
  // in it) and the elements naming or describing it (aria-labelledby, aria-describedby): the
  // message itself when it took the focus, a refused sign-in's reason through the field it
  // describes. So the message that took the focus is read by the focus alone; the one whose page
  // sent the focus on to the next thing to do (the operator's 来电号码, the desk's next card) is
  // announced, and not focused. Decided where the focus is when the words are due, not from the
  // markup: a message whose autofocus lost to an earlier one is announced after all. Set going
  // first, so that a failure further down does not silence it.
  const announcer = document.getElementById("announcer");
  const ids = (el, attribute) =>
    (el.getAttribute(attribute) || "").split(/\s+/).map((id) => (id ? document.getElementById(id) : null));
  const readByFocus = (el) => {
    const focused = document.activeElement;
    if (!(focused instanceof HTMLElement) || focused === document.body) return false;
    if (focused.contains(el)) return true;
    return [...ids(focused, "aria-labelledby"), ...ids(focused, "aria-describedby")].includes(el);
  };
  let due = [...document.querySelectorAll("[data-announce]")].map((el) => ({ el, words: el.dataset.announce }));
  // Words said while the page's own are still due wait for them, in turn (one region, one text).
  const say = (words, el = null) => {
    if (due) due.push({ el, words });
    else if (announcer && words.trim()) announcer.textContent = words.trim();
  };
  const tell = (el) => say(el.textContent, el);
  setTimeout(() => {
    const words = due.filter(({ el }) => !(el && readByFocus(el))).map(({ words }) => words.trim());
    due = null;
    say(words.filter(Boolean).join(" "));
    if (announcer) announcer.dataset.state = "said"; // the page's own words are told (or none were)
  }, 500);

  // Enter in a one-line field of a form that asks for it (data-enter-next) goes on to the next
  // field, as Tab does, instead of the browser's sending the form half filled in: the operator's
  // call, a grid worker's report (whose phone keyboard, told by enterkeyhint, now says 下一项 where
  // its 前往 sent the report without its photos), a resident's number before its four digits.
  // In the last one-line field before the button, Enter sends the form as it always did. Not while
  // an input method is composing Chinese characters: that Enter picks the characters.
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || e.defaultPrevented || e.isComposing || e.keyCode === 229) return;
    if (e.ctrlKey || e.metaKey || e.altKey || e.shiftKey) return;
    const field = e.target;
    if (!(field instanceof HTMLInputElement) || ["submit", "button", "file"].includes(field.type)) return;
    const form = field.form;
    if (!form || !form.hasAttribute("data-enter-next")) return;
    const fields = [...form.elements].filter(
      (el) => form.contains(el) && !el.disabled && !el.hidden && el.type !== "hidden" && el.tabIndex >= 0,
    );
    const next = fields[fields.indexOf(field) + 1];
    if (!(next instanceof HTMLElement) || next.type === "submit") return;
    e.preventDefault();
    next.focus();
  });

  // A map wider than the phone it is on scrolls in its frame (the stylesheet): the ticket's grid
  // (data-centre) is brought to the middle of what shows, not left off to one side.
  for (const frame of document.querySelectorAll(".map-frame[data-centre]")) {
    const shape = frame.querySelector(`g[data-grid="${CSS.escape(frame.dataset.centre)}"]`);
    if (!shape || frame.scrollWidth <= frame.clientWidth) continue;
    const [f, g] = [frame.getBoundingClientRect(), shape.getBoundingClientRect()];
    frame.scrollLeft += g.left + g.width / 2 - (f.left + f.width / 2);
  }

  // --- the hotline operator, and a grid worker's report ----------------------------------------
  // What was typed is kept in this tab (sessionStorage: gone when the tab closes) until the report
  // is accepted, so that the page reloaded, or left and come back to with the browser's back
  // button, mid-call does not cost the words: it comes back filled, with a note to check it.
  // Reached any other way (the menu's 来电登记, signing in again after the session expired), the
  // page is taken for the next call and starts empty: filled in unasked, an abandoned call's
  // phone, address and 紧急 went onto the next caller's ticket. The draft is offered instead,
  // named by its masked phone and its first words, to restore (恢复) or drop (丢弃); typing the new
  // call drops it too. 清空 drops it and starts afresh. Signing out, or a number given, clears it;
  // photos are not kept (a browser cannot refill a file input).
  const DRAFT = "appeals-draft:";
  const clearDrafts = () => {
    for (const key of Object.keys(sessionStorage)) if (key.startsWith(DRAFT)) sessionStorage.removeItem(key);
  };
  if (document.querySelector(".accepted")) clearDrafts();
  document.addEventListener("submit", (e) => {
    if (e.target instanceof HTMLFormElement && e.target.action.endsWith("/console/signout")) clearDrafts();
  });
  const intake = document.querySelector("form[data-preview]");
  if (intake) {
    const key = DRAFT + intake.id;
    const kept = [...intake.elements].filter(
      (el) => el.name && (el.tagName === "TEXTAREA" || ["text", "tel", "checkbox"].includes(el.type)),
    );
    const typed = () => kept.some((el) => (el.type === "checkbox" ? el.checked : el.value.trim()));
    const fill = (values) => {
      for (const el of kept) {
        if (!(el.name in values)) continue;
        if (el.type === "checkbox") el.checked = values[el.name];
        else el.value = values[el.name];
      }
    };
    const restored = () => {
      const note = document.createElement("p");
      note.className = "ok";
      note.id = "draft-restored";
      note.textContent = "已恢复上次未提交的内容，请核对后提交。";
      intake.prepend(note);
      return note;
    };
    let offered = null;
    const save = () => {
      if (offered) offered.remove(); // the new call replaces the draft offered
      offered = null;
      if (!typed()) return sessionStorage.removeItem(key);
      const values = {};
      for (const el of kept) values[el.name] = el.type === "checkbox" ? el.checked : el.value;
      sessionStorage.setItem(key, JSON.stringify(values));
    };
    // A number as the record shows it (shared/privacy.py mask_phone): enough to recognise the call,
    // not to be read off the screen; and the first words of what was said.
    const masked = (phone) => {
      const p = phone.replace(/\s+/g, "");
      if (p.includes("-")) return `${p.slice(0, p.indexOf("-"))}-****${p.slice(p.indexOf("-") + 1).slice(-4)}`;
      return p.length >= 8 ? `${p.slice(0, 3)}****${p.slice(-4)}` : "****";
    };
    const opening = (words) => {
      const chars = [...words.trim().replace(/\s+/g, " ")];
      if (chars.length <= 15) return chars.join("");
      return chars.slice(0, 15).join("").replace(/[\s，。、；：！？,.;:!?]+$/u, "") + "…";
    };
    const named = (draft) => {
      const parts = [];
      if ((draft.caller_phone || "").trim()) parts.push(masked(draft.caller_phone));
      const words = (draft.text || "").trim() || (draft.address || "").trim();
      if (words) parts.push(`“${opening(words)}”`);
      return parts.join("，");
    };
    const offer = (draft) => {
      const box = document.createElement("div");
      box.className = "hint draft-offer";
      box.id = "draft-offer";
      box.setAttribute("role", "group");
      const what = intake.dataset.draft || "内容";
      const said = document.createElement("p");
      said.id = "draft-offer-text";
      const name = named(draft);
      said.textContent = `有一份上次未提交的${what}${name ? "：" + name : ""}。未自动填入；要继续填写请点“恢复”，不要了请点“丢弃”。`;
      box.setAttribute("aria-labelledby", said.id);
      const choice = (label, id, classes) => {
        const button = document.createElement("button");
        button.type = "button";
        button.id = id;
        button.className = classes;
        button.textContent = label;
        button.setAttribute("aria-describedby", said.id);
        return button;
      };
      const restore = choice("恢复", "draft-restore", "");
      const drop = choice("丢弃", "draft-discard", "secondary");
      // Either way the buttons go, and the focus with them: to the form's first field, where the
      // call is checked or typed from the start.
      restore.addEventListener("click", () => {
        box.remove();
        offered = null;
        fill(draft);
        const note = restored();
        kept[0].focus();
        say(note.textContent);
        refresh();
      });
      drop.addEventListener("click", () => {
        box.remove();
        offered = null;
        sessionStorage.removeItem(key);
        kept[0].focus();
        say(`已丢弃上次未提交的${what}`);
      });
      box.append(said, restore, " ", drop);
      intake.prepend(box);
      offered = box;
      tell(said);
    };
    const draft = JSON.parse(sessionStorage.getItem(key) || "null");
    if (draft && !typed()) {
      const [arrival] = performance.getEntriesByType ? performance.getEntriesByType("navigation") : [];
      if (arrival && ["reload", "back_forward"].includes(arrival.type)) {
        fill(draft);
        tell(restored());
      } else {
        offer(draft);
      }
    }
    intake.addEventListener("input", save);
    intake.addEventListener("change", save);
    // 清空: the next call's empty page (the form it names), without this tab's draft.
    const fresh = document.getElementById(intake.dataset.fresh || "");
    if (fresh) fresh.addEventListener("submit", () => sessionStorage.removeItem(key));

    // 智能提示 is asked for after each pause in the typing. The panel is no live region: it would be
    // read out whole after every pause, the same suggestions again and again. What it suggests, in
    // a sentence (its data-suggests, _preview.html), is told through the announcer, politely, when
    // it differs from the last one told; the panel is redrawn only when the server's answer
    // differs, so a focus in it (采用此答复) is not lost to an identical redraw.
    const preview = document.getElementById("preview");
    const text = document.getElementById("text");
    const suggests = () => {
      const said = preview.querySelector("[data-suggests]");
      return said ? said.dataset.suggests : "";
    };
    let shown = null;
    let suggested = suggests(); // a page that came with its preview (no script then) has said it
    let timer = null;
    let asked = 0;

    // What the preview found of each field it judged (its #pv-fields, _preview.html): a field at
    // fault is marked beside it, as a refused submission marks it (aria-invalid, the reason
    // describing it), while the suggestions stay in the panel; a field found fine loses its mark,
    // whoever set it, so a submission's reason the operator has since put right does not stay.
    // The field being typed in is not newly marked until it is left (half a number is no mistake
    // yet); a mark already there follows the typing. A new mark is told, politely, once: the
    // reason is no alert, which would interrupt the typing at every pause.
    let verdict = {};
    let judged = {}; // the values the verdict is about: a field changed since waits for the next
    const labelOf = (field) => {
      const label = intake.querySelector(`label[for="${field.id}"]`);
      return label ? label.textContent.trim() : "";
    };
    const describe = (field, id, on) => {
      const ids = (field.getAttribute("aria-describedby") || "").split(/\s+/).filter((x) => x && x !== id);
      if (on) ids.push(id);
      if (ids.length) field.setAttribute("aria-describedby", ids.join(" "));
      else field.removeAttribute("aria-describedby");
    };
    // Returns what is to be told: the reason of a field newly marked, else nothing.
    const mark = (field, words, typing) => {
      const id = `${field.id}-error`;
      const reason = document.getElementById(id);
      if (!words) {
        if (reason) reason.remove();
        field.removeAttribute("aria-invalid");
        describe(field, id, false);
        return "";
      }
      if ((!reason && typing) || (reason && reason.textContent === words)) return "";
      const written = document.createElement("p");
      written.className = "error";
      written.id = id;
      written.textContent = words;
      if (reason) reason.replaceWith(written);
      else field.closest(".field").append(written);
      field.setAttribute("aria-invalid", "true");
      describe(field, id, true);
      return reason ? "" : `${labelOf(field)}：${words}`;
    };
    const judge = () => {
      const found = preview.querySelector("#pv-fields");
      verdict = found ? JSON.parse(found.dataset.fields || "{}") : {};
      const told = [];
      for (const [name, words] of Object.entries(verdict)) {
        const field = document.getElementById(name);
        if (!field || !intake.contains(field) || field.value !== judged[field.id]) continue;
        const said = mark(field, words, field === document.activeElement);
        if (said) told.push(said);
      }
      return told;
    };
    intake.addEventListener("focusout", (e) => {
      const field = e.target;
      if (!(field instanceof HTMLElement) || !verdict[field.id] || field.value !== judged[field.id]) return;
      const said = mark(field, verdict[field.id], false);
      if (said) say(said);
    });

    const refresh = () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        if (!text.value.trim()) return;
        const mine = ++asked;
        const form = new FormData(intake);
        form.delete("photos"); // the preview reads the words: photos go up once, with the appeal
        const values = Object.fromEntries(kept.map((el) => [el.id, el.value]));
        preview.dataset.state = "asking";
        const response = await post(intake.dataset.preview, form);
        if (!response) return;
        const html = await response.text(); // rendered and escaped by the server
        if (mine !== asked) return;
        if (html !== shown) {
          await unpressed(preview);
          if (mine !== asked) return;
          redrawn(preview, html);
          shown = html;
        }
        judged = values;
        const told = judge();
        const now = suggests();
        if (now && now !== suggested) {
          suggested = now;
          told.unshift(now);
        }
        if (told.length) say(told.join(" ")); // one region, one text: together
        preview.dataset.state = "ready";
      }, 350);
    };
    intake.addEventListener("input", refresh);
    // A knowledge-base answer taken with one click, for the operator to adapt before submitting.
    preview.addEventListener("click", (e) => {
      const use = e.target.closest("button.use-answer");
      if (!use) return;
      const answer = document.getElementById("direct_answer");
      answer.value = use.dataset.answer;
      answer.focus();
    });
    // The operator's keys (the hint above the form): Ctrl+Enter submits from any field; Enter in a
    // one-line field goes on (above), and in 诉求内容, as in any text box, is a new line: a stray
    // Enter no longer sends half an appeal to become a ticket. Not while an input method is
    // composing Chinese characters: that Enter picks the characters. Not on the grid worker's
    // phone form, which a button sends.
    intake.addEventListener("keydown", (e) => {
      if (intake.id !== "intake" || e.key !== "Enter" || e.isComposing || e.keyCode === 229) return;
      if (e.ctrlKey || e.metaKey) {
        e.preventDefault();
        intake.requestSubmit();
      }
    });
    intake.addEventListener("submit", (e) => {
      // An urge asks first and may be called off; a double click urges once (its idempotency key).
      if (e.submitter instanceof HTMLElement && e.submitter.dataset.confirm) return;
      document.getElementById("submit").disabled = true; // one call, one ticket
    });
    if (text.value.trim()) refresh();
  }
  // The grid worker's position, from the phone, when the worker allows it: the grid it falls in is
  // the report's. Refused or unavailable, the report goes to the worker's own grid.
  const locate = document.getElementById("locate");
  if (locate && navigator.geolocation) {
    const state = document.getElementById("location-state");
    locate.hidden = false;
    locate.addEventListener("click", () => {
      // A position refused before (templates/patrol.html) is being replaced: its reason goes.
      const refusal = document.getElementById("location-error");
      if (refusal) refusal.remove();
      state.textContent = "正在获取位置…";
      navigator.geolocation.getCurrentPosition(
        (pos) => {
          const lng = pos.coords.longitude.toFixed(6);
          const lat = pos.coords.latitude.toFixed(6);
          document.getElementById("lng").value = lng;
          document.getElementById("lat").value = lat;
          // Read to the worker as a place is named, to about ten metres; the form sends all six places.
          const shown = `已定位：东经${Number(lng).toFixed(4)}，北纬${Number(lat).toFixed(4)}`;
          const within = Math.round(pos.coords.accuracy);
          state.textContent = within > 0 ? `${shown}（误差约${within}米）` : shown;
          intake.dispatchEvent(new Event("input")); // the preview's grid follows the position
        },
        (err) => {
          state.textContent = (err.code === err.PERMISSION_DENIED ? "未获准读取位置" : "暂时无法定位") + "：将按所属网格上报";
        },
        { enableHighAccuracy: true, timeout: 15000, maximumAge: 60000 },
      );
    });
  }
  // 拍照 (a grid worker's photos on the spot): each tap opens the phone's camera itself (`capture`)
  // and adds the photo taken to those the form sends. A file input holds only what it last chose,
  // so each photo gets a hidden input of its own, dropped again with 删除; the field's own input
  // still picks several from the gallery. A shot called off sends nothing.
  for (const take of document.querySelectorAll("button[data-taken]")) {
    const field = take.closest(".field");
    const taken = document.getElementById(take.dataset.taken);
    const state = document.getElementById(`${take.dataset.taken}-state`);
    const count = () => {
      const items = [...taken.children];
      items.forEach((item, i) => {
        item.querySelector("img").alt = `拍摄的第${i + 1}张照片`;
        item.querySelector("button").textContent = `删除第${i + 1}张`;
      });
      state.textContent = items.length ? `已拍${items.length}张，将随表单上传` : "";
    };
    take.hidden = false;
    take.addEventListener("click", () => {
      for (const unused of field.querySelectorAll("input.shot:not([data-shot])")) unused.remove();
      const input = document.createElement("input");
      input.type = "file";
      input.name = "photos";
      input.accept = "image/*";
      input.className = "shot";
      input.hidden = true;
      input.setAttribute("capture", "environment");
      input.addEventListener("change", () => {
        const file = input.files && input.files[0];
        if (!file) return;
        input.dataset.shot = "";
        const item = document.createElement("li");
        const thumb = document.createElement("img");
        thumb.src = URL.createObjectURL(file);
        thumb.width = thumb.height = 72;
        const drop = document.createElement("button");
        drop.type = "button";
        drop.className = "secondary";
        drop.addEventListener("click", () => {
          URL.revokeObjectURL(thumb.src);
          input.remove();
          item.remove();
          count();
          take.focus();
        });
        item.append(thumb, drop);
        taken.append(item);
        count();
      });
      field.append(input);
      input.click();
    });
  }

  // --- a department's queue: 批量签收 counts what is ticked; 全选 ticks the page's new tickets ----
  const queue = document.getElementById("queue");
  const picks = () => (queue ? [...queue.querySelectorAll("input.pick")] : []);
  const countPicked = () => {
    const all = document.getElementById("pick-all");
    const form = document.getElementById("batch");
    if (!all || !form) return;
    const boxes = picks();
    const n = boxes.filter((b) => b.checked).length;
    all.checked = boxes.length > 0 && n === boxes.length;
    all.indeterminate = n > 0 && n < boxes.length;
    document.getElementById("batch-count").textContent = `（${n}件）`;
    document.getElementById("batch-accept").disabled = n === 0;
    form.dataset.confirm = `确定批量签收所选的${n}件工单吗？签收后开始计算办结时限，不能撤回。`;
  };
  if (queue) {
    queue.addEventListener("change", (e) => {
      if (!(e.target instanceof HTMLInputElement)) return;
      if (e.target.id === "pick-all") for (const b of picks()) b.checked = e.target.checked;
      if (e.target.id === "pick-all" || e.target.classList.contains("pick")) countPicked();
    });
    countPicked();
  }
  // ... and the queue is redrawn when one of its tickets arrives or changes (what was ticked stays).
  if (queue && window.EventSource) {
    const news = document.getElementById("live-news");
    const source = watch(queue.dataset.live);
    source.addEventListener("ready", () => { queue.dataset.liveState = "ready"; });
    // Tickets often come together (a meeting's decision, a batch at the desk): those of a moment
    // redraw the queue once, and the news names them all, not the last one alone.
    let arrived = [];
    const redraw = async () => {
      const batch = arrived;
      arrived = [];
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("queue");
      if (fresh) {
        await unpressed(queue);
        const ticked = new Set(picks().filter((b) => b.checked).map((b) => b.value));
        redrawn(queue, fresh.innerHTML); // the server's own escaped rendering
        for (const b of picks()) b.checked = ticked.has(b.value);
        countPicked();
      }
      // A ticket that left (the desk re-dispatched it) is gone from the redrawn queue; say so.
      const kinds = [["工单已转出本单位：", (d) => d.left], ["新工单已派到本单位：", (d) => !d.left && d.topic === "ticket.assigned"], ["工单有更新：", (d) => !d.left && d.topic !== "ticket.assigned"]];
      const said = [];
      for (const [what, of] of kinds) {
        const nos = [...new Set(batch.filter(of).map((d) => d.ticket_no))];
        if (nos.length) said.push(what + nos.slice(0, 3).join("、") + (nos.length > 3 ? `等${nos.length}件` : ""));
      }
      news.textContent = said.join("；");
    };
    source.addEventListener("ticket", (e) => {
      if (!arrived.length) setTimeout(redraw, 300);
      arrived.push(JSON.parse(e.data));
    });
  }

  // --- the dispatch desk: the chosen category's department is the first button ------------------
  // Step 2's one-click buttons each name the category they are for (data-category); Tab then Enter
  // sends the ticket to the first, so the server puts the chosen category's first (desk.html). As
  // the choice changes (a radio, or 其他分类, which overrides it) that category's button is put
  // first again, the rest in the classifier's order; a category with no button of its own leaves
  // the order as it is. Only the order changes: the focus stays on the choice, each button keeps
  // its name, and the desk may still press another on purpose.
  for (const box of document.querySelectorAll("form.assign .depts")) {
    const form = box.closest("form");
    const offered = [...box.querySelectorAll("button.dept[data-category]")];
    const suggested = [...form.elements].filter((el) => el.name === "category").map((el) => el.value);
    const rank = (button) => suggested.indexOf(button.dataset.category);
    const follow = () => {
      const chosen = valueOf(form, "category_other") || valueOf(form, "category");
      const first = offered.find((button) => button.dataset.category === chosen);
      if (!first) return;
      const order = [first, ...offered.filter((b) => b !== first).sort((a, b) => rank(a) - rank(b))];
      const now = [...box.querySelectorAll("button.dept")];
      if (order.every((button, i) => now[i] === button) || order.includes(document.activeElement)) return;
      box.replaceChildren(...order.flatMap((button) => [" ", button]), " ");
    };
    // 事发网格: the place decides the department for some categories (a street's office, a market's
    // cleaners), so the buttons are asked for again for the grid chosen: each keeps its category,
    // takes that grid's department, and is hidden where that department returned the ticket or
    // none is named. "不改" puts them back as drawn. (Pressed before the answer came, the server
    // refuses the stale one and draws the card for the grid: `stale_suggestion`.)
    const drawn = offered.map((b) => [b.value, b.textContent, b.hidden]);
    const returned = (form.dataset.returned || "").split(" ").filter(Boolean);
    const place = async (grid) => {
      if (!grid) {
        offered.forEach((b, i) => ([b.value, b.textContent, b.hidden] = drawn[i]));
        return;
      }
      const query = new URLSearchParams([["grid", grid], ...offered.map((b) => ["category", b.dataset.category])]);
      const reply = await fetch(`/console/desk/departments?${query}`, { credentials: "same-origin" });
      if (!reply.ok || valueOf(form, "grid") !== grid) return;
      const departments = await reply.json();
      offered.forEach((b, i) => {
        const dept = departments[b.dataset.category];
        b.hidden = !dept || returned.includes(dept.id);
        if (dept) [b.value, b.textContent] = [dept.id, drawn[i][1].replace(/^[^（]*/, dept.name)];
      });
    };
    form.addEventListener("change", (e) => {
      if (["category", "category_other"].includes(e.target.name)) follow();
      if (e.target.name === "grid") place(e.target.value);
    });
    follow(); // a form the browser filled in again as it was left (back, reload)
  }

  // --- copy buttons: the accepted call's number, the credential just issued ---------------------
  // Shown by this script, which copies the text of the element named by data-copy-from and says
  // how it went in the status named by data-copy-state. The clipboard API needs a secure context
  // (https, or this machine); elsewhere the text is selected and copied the old way, and when even
  // that fails, left selected for Ctrl+C.
  for (const button of document.querySelectorAll("button[data-copy-from]")) {
    const source = document.getElementById(button.dataset.copyFrom);
    const state = document.getElementById(button.dataset.copyState);
    button.hidden = false;
    button.addEventListener("click", async () => {
      const text = source instanceof HTMLInputElement ? source.value : source.textContent.trim();
      let copied = false;
      try {
        await navigator.clipboard.writeText(text);
        copied = true;
      } catch {
        if (source instanceof HTMLInputElement) {
          source.focus();
          source.select();
        } else {
          const range = document.createRange();
          range.selectNodeContents(source);
          window.getSelection().removeAllRanges();
          window.getSelection().addRange(range);
        }
        copied = document.execCommand("copy");
      }
      state.className = copied ? "ok" : "error";
      state.textContent = copied ? button.dataset.copied : button.dataset.failed;
    });
  }

  // --- the dashboard ---------------------------------------------------------------------------
  const figures = document.getElementById("figures");
  if (figures && window.EventSource) {
    const state = document.getElementById("live-state");
    const source = watch(figures.dataset.live);
    source.addEventListener("ready", () => { state.textContent = "实时更新：已连接"; figures.dataset.liveState = "ready"; });
    source.addEventListener("error", () => { state.textContent = "实时更新：连接中断，正在重连…"; });
    source.addEventListener("figures", async (e) => {
      const data = JSON.parse(e.data);
      for (const el of figures.querySelectorAll("[data-figure]")) {
        const value = data[el.dataset.figure];
        el.textContent = value === null || value === undefined ? "—" : String(value);
      }
      // The rankings moved with the figures: take the server's fresh rendering of them.
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      const fresh = response.ok
        ? new DOMParser().parseFromString(await response.text(), "text/html").getElementById("rankings")
        : null;
      const rankings = document.getElementById("rankings");
      if (fresh && rankings) {
        await unpressed(rankings);
        redrawn(rankings, fresh.innerHTML);
      }
      state.textContent = "实时更新：已连接（" + new Date().toLocaleTimeString("zh-CN") + " 更新）";
    });
  }
})();
