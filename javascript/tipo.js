// TIPO extension, client side: where the extra NL prompt box sits, "Send to prompt", and the
// diff view's "added only" toggle. Loaded by A1111 1.10 and Forge with their own script.js
// (gradioApp, onUiLoaded, onOptionsChanged, updateInput). Every class used here is made by
// tipoClass(), the counterpart of tipo.diff.css_class() in Python: the Python side sets them
// on the controls (elem_classes) and in the diff's HTML; tests/test_ui_assets.py checks both
// sides spell them alike.

(function() {
    "use strict";

    const TABS = ["txt2img", "img2img"];
    const VIEW_KEY = "tipo-diff-added-only";

    function tipoClass(...names) {
        return ["tipo", ...names].join("-");
    }

    function find(selector, root) {
        return (root || gradioApp()).querySelector(selector);
    }

    function tabOf(element) {
        const tab = element.closest("[id^='tab_']");
        return tab ? tab.id.slice("tab_".length) : null;
    }

    // -- the NL prompt box: in the accordion, below the prompt box, or hidden (Settings → TIPO) --

    const homes = new WeakMap(); // box -> {parent, next}: where gradio put it, to move it back

    function placeNlBox(tab, place) {
        const box = find(`#tab_${tab} .${tipoClass("nl", "prompt")}`);
        if (!box) return;
        if (!homes.has(box)) homes.set(box, {parent: box.parentElement, next: box.nextSibling});
        box.classList.toggle(tipoClass("hidden"), place === "hidden");
        const promptRow = find(`#${tab}_prompt_row`) || find(`#${tab}_prompt`)?.parentElement;
        if (place === "below_prompt" && promptRow) {
            if (box.previousElementSibling !== promptRow) promptRow.after(box);
            box.classList.add(tipoClass("nl", "below", "prompt"));
            return;
        }
        const home = homes.get(box);
        if (box.parentElement !== home.parent) home.parent.insertBefore(box, home.next);
        box.classList.remove(tipoClass("nl", "below", "prompt"));
    }

    function placeNlBoxes() {
        const place = (typeof opts === "object" && opts.tipo_nl_prompt_box) || "accordion";
        TABS.forEach(tab => placeNlBox(tab, place));
    }

    // -- "Send to prompt": the expansion into the tab's prompt box, as if typed there ----------

    function sendToPrompt(button) {
        const tab = tabOf(button);
        const expansion = tab && find(`#tab_${tab} .${tipoClass("preview", "text")} textarea`);
        const prompt = tab && find(`#${tab}_prompt textarea`);
        if (!expansion || !prompt || !expansion.value.trim()) return;
        prompt.value = expansion.value;
        // The input event makes gradio take the value and the WebUI recount the prompt's tokens.
        if (typeof updateInput === "function") {
            updateInput(prompt);
        } else {
            prompt.dispatchEvent(new Event("input", {bubbles: true}));
        }
        prompt.focus();
    }

    // -- the diff view: the whole expansion, or only what TIPO added ---------------------------

    function applyView(addedOnly) {
        gradioApp().querySelectorAll(`.${tipoClass("preview", "html")}`).forEach(view => {
            view.classList.toggle(tipoClass("diff", "added", "only"), addedOnly);
        });
    }

    function toggleView() {
        let addedOnly = false;
        try {
            addedOnly = localStorage.getItem(VIEW_KEY) !== "1";
            localStorage.setItem(VIEW_KEY, addedOnly ? "1" : "0");
        } catch (e) {
            // storage refused (private mode): the toggle still works for this page
            addedOnly = !find(`.${tipoClass("diff", "added", "only")}`);
        }
        applyView(addedOnly);
    }

    function storedView() {
        try {
            return localStorage.getItem(VIEW_KEY) === "1";
        } catch (e) {
            return false;
        }
    }

    onUiLoaded(function() {
        placeNlBoxes();
        applyView(storedView());
        // One listener for both tabs; the diff's HTML is replaced on every preview, so the
        // toggle is found by delegation rather than bound to a node.
        gradioApp().addEventListener("click", function(event) {
            const target = event.target instanceof Element ? event.target : null;
            if (!target) return;
            const send = target.closest(`.${tipoClass("send", "to", "prompt")}`);
            if (send) sendToPrompt(send);
            if (target.closest(`.${tipoClass("diff", "toggle")}`)) toggleView();
        });
    });

    onOptionsChanged(placeNlBoxes);
})();
