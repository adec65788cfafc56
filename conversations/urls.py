from django.urls import path

from conversations import views, web

urlpatterns = [
    path("", views.chat, name="chat"),
    path("c/<uuid:public_id>/", views.chat, name="conversation"),
    # The chat page's conversation actions (conversations/web.py).
    path("c/<uuid:public_id>/rename", web.conversation_rename, name="conversation_rename"),
    path("c/<uuid:public_id>/delete", web.conversation_delete, name="conversation_delete"),
    path("c/<uuid:public_id>/export.md", web.conversation_export, name="conversation_export"),
    path("search", web.conversation_search, name="conversation_search"),
]
