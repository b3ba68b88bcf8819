from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from shop.models import SKU, OrderGoods, OrderInfo, User

admin.site.register(User, UserAdmin)


@admin.register(SKU)
class SKUAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "price", "stock"]
    search_fields = ["name"]


class OrderGoodsInline(admin.TabularInline):
    model = OrderGoods
    extra = 0
    readonly_fields = ["sku", "count", "price"]


@admin.register(OrderInfo)
class OrderInfoAdmin(admin.ModelAdmin):
    list_display = ["order_id", "user", "total_amount", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["order_id", "user__username"]
    inlines = [OrderGoodsInline]
