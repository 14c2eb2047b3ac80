module github.com/natter-chat/natter/web

go 1.26.0
