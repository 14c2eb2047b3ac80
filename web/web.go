// Package web holds natter's page: plain HTML, CSS and JavaScript modules,
// embedded in the binary so the page works offline, with no build step.
package web

import (
	"embed"
	"io/fs"
)

//go:embed static
var files embed.FS

// FS returns the page's files, rooted so that index.html is at the top.
func FS() fs.FS {
	sub, err := fs.Sub(files, "static")
	if err != nil {
		panic("web: " + err.Error()) // "static" is embedded above
	}
	return sub
}
