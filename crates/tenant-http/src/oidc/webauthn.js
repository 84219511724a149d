// Passkey buttons of the sign-in and Security info pages. A button
// (data-passkey = register | enrol | sign-in | second-factor | reset) fetches the options
// from data-begin with its form's fields, asks the browser's authenticator,
// and submits the form with the answer (JSON, binary fields in base64url)
// in the hidden `credential` field. Without WebAuthn the buttons stay hidden
// and the pages work as before.
(() => {
  if (window.idbridgePasskeys || !window.PublicKeyCredential || !navigator.credentials) return;
  window.idbridgePasskeys = true;

  const toBase64url = (buffer) => {
    let text = '';
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  };
  const fromBase64url = (text) => {
    const plain = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4));
    return Uint8Array.from(plain, (c) => c.charCodeAt(0));
  };

  async function create(options) {
    const o = options.publicKey;
    o.challenge = fromBase64url(o.challenge);
    o.user.id = fromBase64url(o.user.id);
    for (const c of o.excludeCredentials || []) c.id = fromBase64url(c.id);
    const made = await navigator.credentials.create({ publicKey: o });
    return {
      id: made.id,
      rawId: toBase64url(made.rawId),
      type: made.type,
      response: {
        attestationObject: toBase64url(made.response.attestationObject),
        clientDataJSON: toBase64url(made.response.clientDataJSON),
      },
    };
  }

  async function get(options) {
    const o = options.publicKey;
    o.challenge = fromBase64url(o.challenge);
    for (const c of o.allowCredentials || []) c.id = fromBase64url(c.id);
    const used = await navigator.credentials.get({ publicKey: o });
    const r = used.response;
    return {
      id: used.id,
      rawId: toBase64url(used.rawId),
      type: used.type,
      response: {
        authenticatorData: toBase64url(r.authenticatorData),
        clientDataJSON: toBase64url(r.clientDataJSON),
        signature: toBase64url(r.signature),
        userHandle: r.userHandle ? toBase64url(r.userHandle) : null,
      },
    };
  }

  for (const button of document.querySelectorAll('button[data-passkey]')) {
    const form = button.form;
    const status = document.getElementById(`${button.id}-status`);
    button.hidden = false;
    button.addEventListener('click', async () => {
      const kind = button.dataset.passkey;
      const creating = kind === 'register' || kind === 'enrol';
      if (creating && !form.reportValidity()) return;
      button.disabled = true;
      status.textContent = 'Waiting for your passkey…';
      try {
        const fields = new URLSearchParams(new FormData(form));
        fields.set('purpose', kind);
        const reply = await fetch(button.dataset.begin, { method: 'POST', body: fields, credentials: 'same-origin' });
        const ceremony = await reply.json();
        if (!reply.ok) throw new Error(ceremony.error || 'The passkey request failed.');
        const answer = creating ? await create(ceremony.options) : await get(ceremony.options);
        form.elements.passkey_token.value = ceremony.token;
        form.elements.credential.value = JSON.stringify(answer);
        form.submit();
      } catch (e) {
        // NotAllowedError: the person cancelled, or no passkey answered in time.
        status.textContent = e && e.name === 'NotAllowedError'
          ? 'No passkey was used. Try again, or use another way.'
          : (e && e.message) || 'The passkey request failed.';
        button.disabled = false;
      }
    });
  }
})();
