module ascendra.dev/images/pause

go 1.24
