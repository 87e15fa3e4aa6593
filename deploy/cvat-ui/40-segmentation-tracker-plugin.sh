#!/bin/sh
# Run by the nginx image of CVAT's UI (cvat/ui) at startup, like every script in
# /docker-entrypoint.d/: makes the UI page load the segmentation tracker plugin
# (/cvat-segmentation-tracker.js, mounted beside it) without rebuilding the UI. It adds a
# sub_filter to the "location /" block of the image's own nginx configuration, so the page
# gets one more <script defer> before </head>; nothing else changes.
set -eu
conf=/etc/nginx/conf.d/default.conf
script=/cvat-segmentation-tracker.js
if grep -q "$script" "$conf"; then
    exit 0
fi
if ! grep -q '^ *location / {$' "$conf"; then
    echo "segmentation tracker plugin: no 'location / {' in $conf: the page is left as it is" >&2
    exit 0
fi
tag="<script src=\"$script\" defer></script>"
patched="$(dirname "$conf")/.default.conf.plugin"
awk -v tag="$tag" '
    { print }
    /^ *location \/ \{$/ {
        print "        sub_filter_once on;"
        print "        sub_filter \"</head>\" \x27" tag "</head>\x27;"
    }
' "$conf" > "$patched"
mv "$patched" "$conf"
echo "segmentation tracker plugin: the UI page loads $script"
