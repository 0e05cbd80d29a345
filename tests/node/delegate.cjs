// A delegate handles a BAL's mail with ImapFlow and Nodemailer, as a mail client would: read the
// message with the given subject in INBOX, reply by SMTP, file the reply into the folder marked
// \Sent and the original into the one marked \Trash. Settings come as JSON in argv[2]; the
// result is printed as JSON. Used by tests/test_clients_node.py.
"use strict";
const fs = require("fs");
const { ImapFlow } = require("imapflow");
const nodemailer = require("nodemailer");
const MailComposer = require("nodemailer/lib/mail-composer");

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const ca = fs.readFileSync(cfg.ca);
  const auth = { user: cfg.imapUser, pass: cfg.password };
  if (cfg.authzid) auth.authzid = cfg.authzid;
  const client = new ImapFlow({
    host: "localhost", port: cfg.imapPort, secure: true, tls: { ca }, auth, logger: false,
  });
  await client.connect();
  const folders = await client.list();
  const sent = folders.find((f) => f.specialUse === "\\Sent");
  const trash = folders.find((f) => f.specialUse === "\\Trash");
  const lock = await client.getMailboxLock("INBOX");
  let result;
  try {
    const uids = await client.search({ subject: cfg.subject }, { uid: true });
    if (uids.length !== 1) throw new Error(`found ${uids.length} messages`);
    // Searches a client makes for new mail, answered from the mailbox's columns.
    const unseen = await client.search({ seen: false }, { uid: true });
    const sinceIt = await client.search({ uid: `${uids[0]}:*` }, { uid: true });
    const original = await client.fetchOne(String(uids[0]), { envelope: true, source: true }, { uid: true });
    const raw = await new MailComposer({
      from: cfg.bal, to: original.envelope.from[0].address,
      subject: `Re: ${original.envelope.subject}`,
      text: "Bien reçu, le Dr vous rappelle demain.\n",
      inReplyTo: original.envelope.messageId, references: original.envelope.messageId,
    }).compile().build();
    const transport = nodemailer.createTransport({
      host: "localhost", port: cfg.smtpPort, secure: true, tls: { ca },
      auth: { user: cfg.smtpUser, pass: cfg.password },
    });
    const info = await transport.sendMail({
      envelope: { from: cfg.bal, to: [original.envelope.from[0].address] }, raw,
    });
    const before = await client.status(sent.path, { uidNext: true });  // the folder's row alone
    const filed = await client.append(sent.path, raw, ["\\Seen"]);
    await client.messageMove(String(uids[0]), trash.path, { uid: true });
    const counted = await client.status(trash.path, { messages: true, unseen: true });
    result = {
      subject: original.envelope.subject, sent: sent.path, trash: trash.path,
      accepted: info.accepted, authenticated: client.authenticated,
      foundUnseen: unseen.includes(uids[0]), foundSince: sinceIt.includes(uids[0]),
      filedAtUidNext: filed.uid === before.uidNext, trashCounted: counted.messages >= 1,
    };
  } finally {
    lock.release();
  }
  await client.logout();
  process.stdout.write(JSON.stringify(result));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
