from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from accounts.models import User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    readonly_fields = ("public_id", "last_login", "date_joined")
    fieldsets = (*(DjangoUserAdmin.fieldsets or ()), ("Identifiers", {"fields": ("public_id",)}))
