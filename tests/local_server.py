"""The local server on 127.0.0.1 (fixture ``server`` in conftest.py) that plays a mirror and Google Drive, for the download tests.

Static files: ``GET /<name>`` from ``server.root``, with ``Range: bytes=N-`` support; a name in
``server.cut`` (a file name, or a Drive file id) is sent half, once (a broken transfer).

Drive: ``server.drive[file_id] = (mode, body)`` answers ``GET /uc?id=<file_id>&export=download``
as Drive does today:

- ``direct``: the file itself (``Content-Disposition: attachment``);
- ``confirm``: the "can't scan this file for viruses" page whose form (``id``,
  ``export=download``, ``confirm``, ``uuid``) leads to ``/download``, which sends the file only
  when all four fields are right;
- ``quota``: the "Too many users have viewed or downloaded this file recently" page;
- ``page``: some other HTML page, without a download form (a sign-in page);
- ``html-file``: an HTML page labelled as the file (``Content-Disposition``).
"""
from __future__ import annotations

import http.server
import re
import urllib.parse
from pathlib import Path

UUID = "0b5e2b93-aaaa-4bbb-8ccc-dddddddddddd"
QUOTA_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>\n'
    '<p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p>'
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try '
    'accessing the file again later. If the file you are trying to access is particularly large or is shared with '
    'many people, it may take up to 24 hours to be able to view or download the file.</p>\n</body></html>\n')
SIGN_IN_PAGE = ('<!DOCTYPE html><html><head><title>Google Drive: Sign-in</title></head>\n'
                '<body><p>Sign in to continue to Google Drive</p></body></html>\n')


def confirm_page(base_url: str, file_id: str) -> str:
    form = (f'<form id="download-form" action="{base_url}/download" method="get">'
            '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" '
            'value="Download anyway"/>'
            f'<input type="hidden" name="id" value="{file_id}">'
            '<input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t">'
            f'<input type="hidden" name="uuid" value="{UUID}"></form>')
    return ('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>\n'
            '<p class="uc-warning-caption">Google Drive can&#39;t scan this file for viruses.</p>\n'
            f'{form}\n</body></html>\n')


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        name = url.path.lstrip("/")
        srv.requests.append((name if not query else f"{name}?{url.query}", self.headers.get("Range")))
        if name == "uc":
            return self._drive(query)
        if name == "download":
            mode, body = srv.drive.get(query.get("id"), (None, None))
            wanted = {"id": query.get("id"), "export": "download", "confirm": "t", "uuid": UUID}
            if mode != "confirm" or query != wanted:
                return self._send(400, b"<html><body>Bad request</body></html>", "text/html")
            return self._send_file(body, query["id"], cut=query["id"] in srv.cut)
        path = Path(srv.root) / name
        if not path.is_file():
            self.send_error(404)
            return
        self._send_file(path.read_bytes(), name, cut=name in srv.cut)

    def _drive(self, query):
        mode, body = self.server.drive.get(query.get("id"), (None, None))
        if mode is None:
            return self._send(404, SIGN_IN_PAGE.encode(), "text/html; charset=utf-8")
        if mode == "direct":
            return self._send_file(body, query["id"], cut=query["id"] in self.server.cut)
        if mode == "html-file":
            return self._send(200, SIGN_IN_PAGE.encode(), "application/octet-stream",
                              {"Content-Disposition": 'attachment; filename="model.caffemodel"'})
        page = {"confirm": confirm_page(self.server.base_url, query["id"]), "quota": QUOTA_PAGE,
                "page": SIGN_IN_PAGE}[mode]
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _send(self, code, body, content_type, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, data: bytes, name: str, cut: bool = False):
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", f'attachment; filename="{Path(name).name}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut:
            self.server.cut.discard(name)
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)
